"""Local `python -m tuner worker` processes: `optimize --workers N` (N workers on one study) and
`optimize --gpus` (one worker per GPU, `CUDA_VISIBLE_DEVICES` set to that GPU, on the study of
its GPU model).

The storage URL reaches them through the environment (never a command line, which `ps`
shows with its password). Ctrl-C reaches them too: a terminal signals the whole process
group, and a SIGINT sent to this process alone is forwarded. They end with this process, a
SIGKILL of it included (tuner.lifetime).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError, TunerError
from harness.gpus import VISIBLE_ENV, GpuInfo
from tuner.lifetime import die_with_parent, popen_dies_with_parent

if TYPE_CHECKING:
    from tuner.config import StudyConfig
    from tuner.study import Prepared

STORAGE_ENV = "TUNER_STORAGE"
#: Backends that run on an NVIDIA GPU; `null` simulates one (tests).
GPU_BACKENDS = ("tensorrt", "torch")
SIMULATED_GPU_BACKENDS = ("null",)


@dataclass(frozen=True)
class Command:
    """One worker process to start: its arguments and its whole environment."""

    argv: list[str]
    env: dict[str, str]


Popen = Callable[..., Any]


def worker_argv(
    study: str,
    cache_dir: Path,
    runs_dir: Path,
    heartbeat_s: int,
    quiet: bool,
    name: str,
    isolate: bool = False,
) -> list[str]:
    """The command line of one `python -m tuner worker` on `study`."""
    argv = [
        sys.executable,
        "-m",
        "tuner",
        "worker",
        "--study",
        study,
        "--cache-dir",
        str(cache_dir),
        "--runs-dir",
        str(runs_dir),
        "--heartbeat-s",
        str(heartbeat_s),
        "--worker-name",
        name,
    ]
    if quiet:
        argv.append("--quiet")
    if isolate:
        argv.append("--isolate-trials")
    return argv


def run_workers(
    count: int,
    storage: str,
    study: str,
    cache_dir: Path,
    runs_dir: Path,
    heartbeat_s: int,
    quiet: bool,
    isolate: bool = False,
) -> int:
    """Start `count` workers, wait for all of them; 130 if interrupted, else the worst code."""
    env = {**os.environ, STORAGE_ENV: storage}
    commands = [
        Command(
            worker_argv(
                study, cache_dir, runs_dir, heartbeat_s, quiet, f"worker {i + 1}", isolate
            ),
            env,
        )
        for i in range(count)
    ]
    return run_processes(commands)


def run_processes(commands: Sequence[Command], popen: Popen = subprocess.Popen) -> int:
    """Start every command, wait for all; 130 if interrupted (SIGINT forwarded to those still
    running), else the worst exit code. Each dies with this process (SIGKILL included)."""
    procs = [popen(c.argv, env=c.env, preexec_fn=popen_dies_with_parent()) for c in commands]
    interrupted = False
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        interrupted = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        codes = [p.wait() for p in procs]
    if interrupted or 130 in codes:
        return 130
    failed = [code for code in codes if code != 0]
    if not failed:
        return 0
    # Popen says -N for a worker killed by signal N (max() would call that success); the
    # shell's 128 + N instead.
    return max(128 - code if code < 0 else code for code in failed)


# --- --gpus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuGroup:
    """GPUs of one model: they share one study."""

    model: str
    gpus: tuple[GpuInfo, ...]
    study: str = ""

    @property
    def visible(self) -> str:
        """CUDA_VISIBLE_DEVICES of a process that sees exactly this group's GPUs."""
        return ",".join(g.cuda_id for g in self.gpus)


def check_gpu_backend(backend: str, what: str = "--gpus") -> None:
    """ConfigError unless `backend` runs on (or simulates) a GPU."""
    if backend not in GPU_BACKENDS + SIMULATED_GPU_BACKENDS:
        raise ConfigError(
            f"{what}: needs a GPU backend ({', '.join(GPU_BACKENDS)}), not {backend!r}"
        )


def select_gpus(text: str, found: Sequence[GpuInfo], reason: str = "") -> list[GpuInfo]:
    """`--gpus all` or `--gpus 0,2` (nvidia-smi indices) among the GPUs found."""
    if not found:
        why = f": {reason}" if reason else ""
        raise TunerError(f"--gpus: no NVIDIA GPU found{why}")
    by_index = {g.index: g for g in found}
    listing = ", ".join(str(g.index) for g in found)
    if text.strip() == "all":
        return list(found)
    entries = [e.strip() for e in text.split(",")]
    if not entries or any(not e for e in entries):
        raise ConfigError(f"--gpus: expected 'all' or indices like 0,2, got {text!r}")
    chosen: list[GpuInfo] = []
    for entry in entries:
        if not entry.isdigit():
            raise ConfigError(f"--gpus: {entry!r} is not a GPU index (found: {listing})")
        gpu = by_index.get(int(entry))
        if gpu is None:
            raise ConfigError(f"--gpus: no GPU {entry} (found: {listing})")
        if gpu in chosen:
            raise ConfigError(f"--gpus: GPU {entry} is given twice")
        chosen.append(gpu)
    return chosen


def group_by_model(gpus: Sequence[GpuInfo]) -> list[GpuGroup]:
    """One group per GPU model, in the order the models first appear."""
    groups: dict[str, list[GpuInfo]] = {}
    for gpu in gpus:
        groups.setdefault(gpu.name, []).append(gpu)
    return [GpuGroup(model, tuple(members)) for model, members in groups.items()]


def gpu_commands(
    groups: Sequence[GpuGroup],
    storage: str,
    cache_dir: Path,
    runs_dir: Path,
    heartbeat_s: int,
    quiet: bool,
    environ: Mapping[str, str] | None = None,
    isolate: bool = False,
) -> list[Command]:
    """One worker per GPU, on its group's study, seeing only that GPU (as cuda:0)."""
    base = dict(os.environ if environ is None else environ)
    commands = []
    for group in groups:
        for gpu in group.gpus:
            name = f"gpu {gpu.index} ({gpu.name})"
            env = {**base, STORAGE_ENV: storage, VISIBLE_ENV: gpu.cuda_id}
            argv = worker_argv(group.study, cache_dir, runs_dir, heartbeat_s, quiet, name, isolate)
            commands.append(Command(argv, env))
    return commands


@contextlib.contextmanager
def visible_devices(value: str) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES=`value` in this process's environment for the block, for the child
    processes it starts (trials, confirmation runs, the system run); restored afterwards."""
    saved = os.environ.get(VISIBLE_ENV)
    os.environ[VISIBLE_ENV] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(VISIBLE_ENV, None)
        else:
            os.environ[VISIBLE_ENV] = saved


def prepare_elsewhere(cfg: StudyConfig, heartbeat_s: int) -> Prepared:
    """`tuner.study.prepare(cfg)` run in a spawned process (which inherits this process's
    CUDA_VISIBLE_DEVICES; see `visible_devices`), then the study loaded here.

    A GPU backend probes its device with cuInit, which reads CUDA_VISIBLE_DEVICES once per
    process: probing the studies of several GPU models from this process would name every one
    after the first. This process never touches CUDA."""
    from tuner.space import SearchSpace
    from tuner.study import Prepared, load

    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_prepare_child,
        args=(cfg, heartbeat_s, sender, os.getpid()),
        name="prepare",
        daemon=True,
    )
    process.start()
    sender.close()
    try:
        message = json.loads(receiver.recv_bytes())  # JSON, never a pickle
    except EOFError:
        message = {"ok": False, "code": 1, "text": f"preparing study {cfg.name!r} crashed"}
    finally:
        receiver.close()
        process.join()
    if not message["ok"]:
        code, text = message["code"], message["text"]
        raise (ConfigError if code == ConfigError.exit_code else TunerError)(text)
    study = load(cfg.storage, message["name"], heartbeat_s)
    space = SearchSpace.from_dict(message["space"])
    return Prepared(cfg, study, space, dict(study.user_attrs))


def _prepare_child(cfg: StudyConfig, heartbeat_s: int, sender: Connection, parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    import optuna

    from tuner.study import prepare

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    message: dict[str, Any]
    try:
        prepared = prepare(cfg, heartbeat_s)
        name, space = prepared.study.study_name, prepared.space.to_dict()
        message = {"ok": True, "name": name, "space": space}
    except TunerError as exc:
        message = {"ok": False, "code": exc.exit_code, "text": str(exc)}
    except Exception as exc:
        message = {"ok": False, "code": 1, "text": f"{type(exc).__name__}: {exc}"}
    try:
        sender.send_bytes(json.dumps(message).encode())
    finally:
        sender.close()
