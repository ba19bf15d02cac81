"""The Docker files, checked without a Docker engine: compose.yaml parsed with PyYAML, the
Dockerfiles line by line, commands run through the real CLI parser."""

from __future__ import annotations

import glob
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner import config
from tuner.artifacts import ARTIFACTS_ENV
from tuner.cli import STORAGE_ENV, build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile"}
PSYCOPG_URL = re.compile(r"^postgresql\+psycopg://[^:@/]+:[^@/]+@postgres:5432/\w+$")
_VAR = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def substitute(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR and $$."""
    env = env or {}

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(3)
        return env.get(name) or m.group(2) or ""

    return _VAR.sub(one, text)


def interpolate(node: Any, env: dict[str, str] | None = None) -> Any:
    if isinstance(node, str):
        return substitute(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def port_bindings(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of each published port, short or long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", "")), port["target"]))
            continue
        parts = str(port).rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
        else:  # "8080" or "8080:8080": every interface
            out.append(("", parts[0], parts[-1]))
    return out


def optional_extras() -> dict[str, list[str]]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["project"]["optional-dependencies"]


# --- compose.yaml ---------------------------------------------------------------------------


def test_compose_has_the_services(services: dict[str, Any]) -> None:
    assert {"postgres", "worker", "submit", "dashboard"} <= set(services)


def test_tuner_services_share_one_image_definition() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    anchors = [k for k in raw if k.startswith("x-")]
    assert anchors, "the tuner image settings should live in an x- extension"
    for name in ("worker", "dashboard"):
        svc = raw["services"][name]
        assert svc["image"] == raw[anchors[0]]["image"]
        assert svc["build"]["dockerfile"] == "docker/Dockerfile.cpu"
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()


def test_postgres_is_official_16_healthchecked_and_not_public(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    assert pg["image"].split(":")[0] in ("postgres", "docker.io/library/postgres")
    assert pg["image"].split(":")[1].split("-")[0] == "16"
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    for host_ip, _, _ in port_bindings(pg):
        assert host_ip == "127.0.0.1", f"postgres published on {host_ip or 'every interface'}"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    named = pg["volumes"][0].split(":")[0]
    assert named in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_postgres_password_comes_from_the_environment() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    password = raw["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD")
    assert substitute(password, {"POSTGRES_PASSWORD": "s3cret"}) == "s3cret"


def test_dashboard_is_published_on_loopback_only(services: dict[str, Any]) -> None:
    dash = services["dashboard"]
    args = build_parser().parse_args(command(dash))
    assert args.command == "dashboard"
    assert args.host == "0.0.0.0"  # inside the container, so that the published port reaches it
    bindings = port_bindings(dash)
    assert bindings, "the dashboard port is not published"
    for host_ip, _, container_port in bindings:
        assert host_ip == "127.0.0.1"
        assert int(container_port) == args.port


def test_workers_serve_the_queue_of_one_postgres_database(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert PSYCOPG_URL.match(worker["environment"][STORAGE_ENV])
    assert services["dashboard"]["environment"][STORAGE_ENV] == worker["environment"][STORAGE_ENV]
    args = build_parser().parse_args(command(worker))
    assert args.command == "worker" and args.study is None  # no study: the queue
    assert not args.once  # a service waits for more studies
    replicas = worker.get("deploy", {}).get("replicas", worker.get("scale"))
    assert int(replicas) == 2
    assert worker["depends_on"], "workers must wait for the database"


def test_workers_dashboard_and_submit_share_one_artifact_store(services: dict[str, Any]) -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert "artifacts" in raw["volumes"]
    for name in ("worker", "dashboard", "submit"):
        svc = services[name]
        where = svc["environment"][ARTIFACTS_ENV]
        assert any(v == f"artifacts:{where}" for v in svc["volumes"]), name
    assert services["worker"]["environment"][ARTIFACTS_ENV] == "/artifacts"


def test_submit_is_a_one_shot_profile_that_queues_the_study_file(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--profile submit run --rm submit` queues the study file; `up` leaves it out. The
    study file names SQLite; $TUNER_STORAGE from compose must win, as `optimize` does."""
    submit = services["submit"]
    assert submit["profiles"] == ["submit"]
    assert "restart" not in submit
    url = submit["environment"][STORAGE_ENV]
    monkeypatch.chdir(REPO)  # the image's WORKDIR holds studies/ as the repository does
    args = build_parser().parse_args(command(submit))
    assert args.command == "submit"
    cfg = config.build(args.config, storage=args.storage or url)
    assert cfg.storage == url


def test_workers_wait_for_postgres_to_be_healthy(services: dict[str, Any]) -> None:
    def waits_for_postgres(name: str, seen: frozenset[str] = frozenset()) -> bool:
        deps = services[name].get("depends_on", {})
        if isinstance(deps, list):
            return False  # the short form only waits for the start
        for dep, cond in deps.items():
            if dep == "postgres" and cond["condition"] == "service_healthy":
                return True
            ordered = cond["condition"] in ("service_healthy", "service_completed_successfully")
            if ordered and dep not in seen and waits_for_postgres(dep, seen | {name}):
                return True
        return False

    assert waits_for_postgres("worker")
    assert waits_for_postgres("dashboard")


def test_every_tuner_command_parses(services: dict[str, Any]) -> None:
    parser = build_parser()
    parsed = {}
    for name, svc in services.items():
        if svc.get("build", {}).get("dockerfile", "").startswith("docker/Dockerfile"):
            argv = command(svc)
            args = parser.parse_args(argv)  # SystemExit on an unknown flag or command
            assert args.command == argv[0], (name, argv)
            parsed[name] = args.command
    assert parsed.items() >= {
        ("worker", "worker"),
        ("submit", "submit"),
        ("dashboard", "dashboard"),
    }, parsed


def test_study_files_mentioned_exist() -> None:
    text = COMPOSE.read_text() + "".join(p.read_text() for p in DOCKERFILES.values())
    text += (REPO / "README.md").read_text()
    paths = set(re.findall(r"studies/\w[\w.-]*\.toml", text))
    assert paths
    for path in paths:
        assert (REPO / path).is_file(), path


def test_docker_compose_config_validates() -> None:
    """Compose resolves the file without an engine; skipped where the plugin is missing."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin")
    done = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# --- Dockerfiles ----------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name} ends in a continuation line"
    return out


def args_of(path: Path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


def test_base_images() -> None:
    (cpu,) = args_of(DOCKERFILES["cpu"], "FROM")
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?", cpu), cpu
    (gpu,) = args_of(DOCKERFILES["gpu"], "FROM")
    assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", gpu), gpu


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_runs_as_a_non_root_user(kind: str) -> None:
    users = args_of(DOCKERFILES[kind], "USER")
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (w, _) in enumerate(instructions(DOCKERFILES[kind])) if w == "USER")
    later = [w for w, _ in instructions(DOCKERFILES[kind])[last_user:]]
    assert "RUN" not in later


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_entrypoint_is_the_tuner(kind: str) -> None:
    (entry,) = args_of(DOCKERFILES[kind], "ENTRYPOINT")
    assert json.loads(entry) == ["python", "-m", "tuner"]
    (cmd,) = args_of(DOCKERFILES[kind], "CMD")
    build_parser().parse_args(json.loads(cmd))


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_pip_installs_existing_extras(kind: str) -> None:
    extras = optional_extras()
    runs = " ".join(args_of(DOCKERFILES[kind], "RUN"))
    found = re.findall(r"pip install [^&]*?[\"']?\.\[([\w,-]+)\][\"']?", runs)
    assert found, "the project is not pip-installed from its source"
    for group in found:
        wanted = group.split(",")
        assert set(wanted) <= set(extras), f"unknown extras {set(wanted) - set(extras)}"
        assert {"postgres", "dashboard", "report"} <= set(wanted)
    assert "--no-cache-dir" in runs


def test_gpu_image_takes_the_gpu_extra_but_tensorrt_from_its_base() -> None:
    runs = " ".join(args_of(DOCKERFILES["gpu"], "RUN"))
    assert not re.search(r"\.\[[\w,-]*\bgpu\b", runs), "the gpu extra would reinstall TensorRT"
    for requirement in optional_extras()["gpu"]:
        if requirement.startswith("tensorrt"):
            assert not re.search(r"\btensorrt\b", runs)
        else:
            assert requirement in runs, f"{requirement} (gpu extra) is not installed"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_copy_sources_exist(kind: str) -> None:
    copies = args_of(DOCKERFILES[kind], "COPY")
    assert copies
    sources: list[str] = []
    for rest in copies:
        words = [w for w in shlex.split(rest) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(rest))
        sources += words[:-1]
    for source in sources:
        assert glob.glob(str(REPO / source)), f"COPY {source}: not in the repository"
    copied = {s.rstrip("/") for s in sources}
    assert {"pyproject.toml", "README.md", "harness", "tuner", "studies/*.toml"} <= copied
    # the build context sends only what is allowed in the Dockerfile's own .dockerignore
    ignore = Path(f"{DOCKERFILES[kind]}.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert copied <= allowed, f"excluded from the build context: {copied - allowed}"


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_cache_and_working_folder(kind: str) -> None:
    env = " ".join(args_of(DOCKERFILES[kind], "ENV"))
    assert re.search(r"\bXDG_CACHE_HOME=/cache\b", env)
    assert args_of(DOCKERFILES[kind], "WORKDIR")[-1] == "/work"
    # compose mounts its cache volume where the image puts the cache
    raw = yaml.safe_load(COMPOSE.read_text())
    if kind == "cpu":
        volumes = raw["services"]["worker"]["volumes"]
        assert any(v.split(":")[1] == "/cache" for v in volumes)
