"""Files a study needs or makes, kept in Optuna's artifact store: the model (with its external
weights) and `--data` samples a submitted study is measured on, and each trial's LoadGen logs
(and a failed trial's error), so that workers on any host, `report` and optuna-dashboard need
only the database and the store, not the host that submitted or measured.

The store is `optuna.artifacts.FileSystemArtifactStore` on a folder (by default beside an
SQLite database: `<database>.artifacts/`), or `Boto3ArtifactStore` for `s3://bucket` where
boto3 is installed. Inputs are stored by content: the blob's id is its sha256 in hex, so a model
submitted twice is stored once, and a worker checks every fetched file against its hash before
anything loads it (an altered blob is refused, never run). Each blob is also recorded on its
study or trial the way `optuna.artifacts.upload_artifact` records one (a system attribute
`artifacts:<id>` holding its ArtifactMeta), so `get_all_artifact_meta` and the dashboard's
artifact view list it.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import optuna
from optuna.artifacts import ArtifactMeta, get_all_artifact_meta
from optuna.trial import FrozenTrial

from harness.errors import ConfigError, TunerError
from tuner import optuna_compat as compat

#: Environment variable read when --artifacts is not given.
ARTIFACTS_ENV = "TUNER_ARTIFACTS"
#: How Optuna names the system attribute that records an artifact on a study or trial
#: (optuna.artifacts.upload_artifact); the dashboard lists what is recorded so.
_META_PREFIX = "artifacts:"
_CHUNK = 1 << 20


class Store(Protocol):
    """What the tuner uses of Optuna's ArtifactStore protocol."""

    def open_reader(self, artifact_id: str) -> BinaryIO: ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None: ...


@dataclass(frozen=True)
class StoredFile:
    """One input file in the store: its name relative to its set's folder, its sha256 and
    size. A set (a model with its weights, a data folder) is fetched back as that folder."""

    name: str
    sha256: str
    size: int

    @property
    def artifact_id(self) -> str:
        """The blob's id in the store: its sha256 in hex (optuna-dashboard serves ids made of
        hex digits and dashes only)."""
        return self.sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> StoredFile:
        if not isinstance(data, dict):
            raise TunerError(f"stored file entry {data!r} is not a table")
        return cls(str(data["name"]), str(data["sha256"]), int(data["size"]))


def default_location(storage: str) -> str | None:
    """The folder beside an SQLite database (`<file>.artifacts`); None for other storages."""
    prefix = "sqlite:///"
    if storage.startswith(prefix) and storage[len(prefix) :] not in ("", ":memory:"):
        return f"{storage[len(prefix) :]}.artifacts"
    return None


def location(given: str | None, storage: str) -> str:
    """The store's location: `given` (--artifacts), else $TUNER_ARTIFACTS, else beside an
    SQLite database; a ConfigError saying what to pass otherwise."""
    found = given or os.environ.get(ARTIFACTS_ENV) or default_location(storage)
    if not found:
        raise ConfigError(
            "--artifacts: a PostgreSQL study needs a shared artifact store that every worker "
            f"reaches: a folder on a shared file system or s3://BUCKET (or ${ARTIFACTS_ENV})"
        )
    return found


def study_store(study: optuna.Study, given: str | None = None) -> Store:
    """The store a queued study's files went to: `given` (--artifacts), else
    $TUNER_ARTIFACTS, else the one recorded at submission, else beside an SQLite database."""
    queued = study.user_attrs.get("queue")
    recorded = queued.get("artifacts") if isinstance(queued, dict) else None
    url = compat_url(study)
    return open_store(location(given or os.environ.get(ARTIFACTS_ENV) or recorded, url))


def compat_url(study: optuna.Study) -> str:
    """The study's storage URL where it is a database Optuna opened by URL, else ""."""
    engine = compat.engine(study)
    return engine.url.render_as_string(hide_password=True) if engine is not None else ""


def open_store(where: str, create: bool = False) -> Store:
    """The artifact store at `where`: a folder, or s3://bucket through boto3."""
    if where.startswith("s3://"):
        bucket = where[len("s3://") :].strip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"--artifacts {where}: give s3://BUCKET (no prefix)")
        try:
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError as exc:  # optuna imports boto3 lazily; the store needs it
            raise ConfigError(f"--artifacts {where}: needs boto3 (pip install boto3)") from exc
        try:
            return Boto3ArtifactStore(bucket)
        except ImportError as exc:
            raise ConfigError(f"--artifacts {where}: needs boto3 (pip install boto3)") from exc
    folder = Path(where).expanduser()
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--artifacts {where}: cannot create the folder ({exc})") from exc
    if not folder.is_dir():
        raise ConfigError(f"--artifacts {where}: no such folder")
    if create and not os.access(folder, os.W_OK):
        raise ConfigError(f"--artifacts {where}: the folder is not writable")
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(str(folder))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def put(store: Store, path: Path, name: str) -> StoredFile:
    """Store a file's bytes under their hash, unless the store holds them already."""
    entry = StoredFile(name, file_sha256(path), path.stat().st_size)
    if not _has(store, entry.artifact_id):
        with path.open("rb") as f:
            store.write(entry.artifact_id, f)
    return entry


def put_set(store: Store, paths: Sequence[Path], root: Path) -> list[StoredFile]:
    """Store files named relative to `root` (a model and its weights, a data folder)."""
    return [put(store, path, path.relative_to(root).as_posix()) for path in paths]


def fetch_set(store: Store, files: Sequence[StoredFile], cache: Path) -> Path:
    """The folder holding `files` as they were submitted, fetched into `cache` once per
    content (the folder is named by their hashes) and each checked against its sha256."""
    key = hashlib.sha256(
        json.dumps(sorted((f.name, f.sha256) for f in files)).encode()
    ).hexdigest()
    folder = cache / "artifacts" / key[:32]
    if folder.is_dir() and all(_intact(folder / f.name, f) for f in files):
        return folder
    cache.joinpath("artifacts").mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache / "artifacts"))
    try:
        for entry in files:
            target = staging / entry.name
            if ".." in Path(entry.name).parts or Path(entry.name).is_absolute():
                raise TunerError(f"stored file name {entry.name!r} leaves its folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            _download(store, entry, target)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)  # whole, or not at all: another worker may race us
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _download(store: Store, entry: StoredFile, target: Path) -> None:
    """Copy a blob to `target`, refusing it unless its bytes hash to the recorded sha256."""
    digest = hashlib.sha256()
    try:
        reader = store.open_reader(entry.artifact_id)
    except Exception as exc:  # the stores raise ArtifactNotFound, OSError, botocore errors
        raise TunerError(f"artifact store: {entry.name} ({entry.artifact_id}) is missing") from exc
    with reader, target.open("wb") as out:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != entry.sha256:
        target.unlink(missing_ok=True)
        raise TunerError(
            f"artifact store: {entry.name} hashes to {digest.hexdigest()[:12]}..., not the "
            f"{entry.sha256[:12]}... recorded at submission: refused (the store was altered)"
        )


def _intact(path: Path, entry: StoredFile) -> bool:
    return (
        path.is_file() and path.stat().st_size == entry.size and file_sha256(path) == entry.sha256
    )


def _has(store: Store, artifact_id: str) -> bool:
    try:
        reader = store.open_reader(artifact_id)
    except Exception:  # not found: each store raises its own error
        return False
    reader.close()
    return True


def record(
    study: optuna.Study,
    files: Sequence[StoredFile],
    trial: optuna.Trial | FrozenTrial | None = None,
) -> None:
    """Record stored files on the study (or one of its trials) as Optuna records artifacts."""
    storage = compat.storage(study)
    for entry in files:
        meta = ArtifactMeta(
            artifact_id=entry.artifact_id,
            filename=entry.name,
            mimetype=mimetypes.guess_type(entry.name)[0] or "application/octet-stream",
            encoding=None,
        )
        key, value = _META_PREFIX + entry.artifact_id, json.dumps(asdict(meta))
        if trial is None:
            storage.set_study_system_attr(compat.study_id(study), key, value)
        else:
            storage.set_trial_system_attr(compat.trial_id(trial), key, value)


def upload_logs(
    store: Store,
    study: optuna.Study,
    trial: optuna.Trial | FrozenTrial,
    folder: Path | None,
    error: str | None,
) -> int:
    """Upload a trial's LoadGen logs (every run's summary and detail log under `folder`) and,
    for a failed trial, its error as `error.txt`; return how many files went up."""
    files: list[StoredFile] = []
    if folder is not None and folder.is_dir():
        for log in sorted(folder.rglob("mlperf_log_*.txt")):
            if log.name in ("mlperf_log_summary.txt", "mlperf_log_detail.txt"):
                files.append(put(store, log, log.relative_to(folder).as_posix()))
    if error:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "error.txt"
            path.write_text(error + "\n")
            files.append(put(store, path, "error.txt"))
    record(study, files, trial)
    return len(files)


def trial_files(study: optuna.Study, trial: FrozenTrial) -> list[ArtifactMeta]:
    """The artifacts recorded on a trial, by file name."""
    metas = get_all_artifact_meta(trial, storage=compat.storage(study))
    return sorted(metas, key=lambda m: m.filename)


def download_trial_logs(store: Store, study: optuna.Study, out: Path) -> Iterator[Path]:
    """Every trial's recorded artifacts, written under `out/trial-NNNN/`; yields the paths."""
    for trial in study.get_trials(deepcopy=False):
        for meta in trial_files(study, trial):
            target = out / f"trial-{trial.number:04d}" / meta.filename
            if ".." in Path(meta.filename).parts:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.open_reader(meta.artifact_id) as reader, target.open("wb") as f:
                shutil.copyfileobj(reader, f)
            yield target
