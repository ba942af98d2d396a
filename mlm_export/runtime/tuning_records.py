"""Tuning records: what `mlm-export tune` measured for an artifact on this machine, in the user's cache.

Never in the artifact (it may be signed or read-only): one JSON file per artifact and CPU, named after the
manifest's sha256 and the CPU, so a copied artifact keeps its record and an edited one (a new manifest)
loses it. The file's format is the shipped `tuning-v1` schema; a file that does not match it, or names
another manifest or CPU, is no record. Writes are atomic and merge with the record on disk, so two `tune`
runs of different tasks both land. Torch-free.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import StorageError
from .backends import cpu_class

TUNING_SCHEMA = "tuning-v1"
CACHE_ENV = "MLM_EXPORT_CACHE"  # the folder for tuning records; default: $XDG_CACHE_HOME/mlm-export


@dataclass(frozen=True)
class VariantTiming:
    """One variant's medians on the tuned workloads, and its time relative to the fastest (geometric mean)."""

    variant: str
    backend: str
    median_ms: dict[str, float]
    relative: float


@dataclass(frozen=True)
class TaskTuning:
    """The winner of one task on this CPU: the fastest variant whose gate passed at export."""

    task: str
    winner: str
    backend: str
    threads: int | None
    created: str
    timings: tuple[VariantTiming, ...] = ()

    def summary(self) -> str:
        return ", ".join(f"{t.variant} {t.relative:.2f}x" for t in sorted(self.timings, key=lambda t: t.relative))


@dataclass(frozen=True)
class TuningRecord:
    """Everything `mlm-export tune` measured for one artifact (by its manifest's sha256) on one CPU model."""

    manifest_sha256: str
    cpu_model: str
    cpu_class: str
    tasks: dict[str, TaskTuning] = field(default_factory=dict)
    schema: str = TUNING_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists, not tuples): the file's content and `tune --json`'s `record`."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningRecord:
        tasks = {name: TaskTuning(**(dict(task) | {"timings": tuple(VariantTiming(**t) for t in task["timings"])}))
                 for name, task in data["tasks"].items()}
        return cls(data["manifest_sha256"], data["cpu_model"], data["cpu_class"], tasks, data["schema"])


def cache_dir() -> Path:
    """Where tuning records live: `MLM_EXPORT_CACHE`, else `$XDG_CACHE_HOME/mlm-export` (`~/.cache/mlm-export`)."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "mlm-export"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def manifest_sha256(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def record_path(manifest_bytes: bytes, model: str | None = None) -> Path:
    """The record's file for this artifact and CPU: the manifest's sha256, then a short hash of the CPU model
    and class (a VM may report a bare "AMD EPYC": the class tells Zen generations apart)."""
    cpu = f"{model or cpu_model()}|{cpu_class()}"
    name = f"{manifest_sha256(manifest_bytes)}-{hashlib.sha256(cpu.encode()).hexdigest()[:12]}.json"
    return cache_dir() / "tuning" / name


def read_record(manifest_bytes: bytes) -> TuningRecord | None:
    """This machine's record for the artifact, or None (none, unreadable, or for another manifest or CPU)."""
    from ..contracts import validate

    path = record_path(manifest_bytes)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        validate(data, TUNING_SCHEMA)  # any shape but the schema's is no record, never an error later
        record = TuningRecord.from_dict(data)
    except Exception:  # noqa: BLE001 - missing, unreadable, malformed: no record
        return None
    if record.manifest_sha256 != manifest_sha256(manifest_bytes) or record.cpu_model != cpu_model():
        return None
    if any(task.winner not in {t.variant for t in task.timings} for task in record.tasks.values()):
        return None
    return record


def write_record(manifest_bytes: bytes, record: TuningRecord) -> Path:
    """Write `record`'s tasks over those of the record on disk (another run may have tuned other tasks since
    this one read it), atomically: a reader sees the old file or the new one, never half of one."""
    on_disk = read_record(manifest_bytes)
    if on_disk is not None:
        record = replace(record, tasks=on_disk.tasks | record.tasks)
    return _replace_file(manifest_bytes, record)


def forget_tasks(manifest_bytes: bytes, tasks: Iterable[str] = ()) -> tuple[Path | None, tuple[str, ...]]:
    """Remove `tasks` from this machine's record (all of them when empty; the file goes with its last task):
    the record's path, or None when there was none, and the tasks removed."""
    record = read_record(manifest_bytes)
    path = record_path(manifest_bytes)
    if record is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # an unreadable leftover
        return None, ()
    wanted = set(tasks) or set(record.tasks)
    removed = tuple(sorted(wanted & set(record.tasks)))
    kept = {name: task for name, task in record.tasks.items() if name not in wanted}
    try:
        if kept:
            _replace_file(manifest_bytes, replace(record, tasks=kept))
        else:
            path.unlink()
    except OSError as exc:
        raise StorageError(f"cannot change the tuning record {path}: {exc.strerror or exc}") from exc
    return path, removed


def check_writable(manifest_bytes: bytes) -> Path:
    """The record's folder, created and written to once: a cache that cannot take the record fails before
    minutes of timing rather than after."""
    path = record_path(manifest_bytes)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".probe-"):
            pass
    except OSError as exc:
        raise StorageError(f"cannot write tuning records to {path.parent}: {exc.strerror or exc} (set "
                           f"{CACHE_ENV} to a writable folder)") from exc
    return path.parent


def _replace_file(manifest_bytes: bytes, record: TuningRecord) -> Path:
    path = record_path(manifest_bytes, record.cpu_model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record.to_dict(), fh, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise StorageError(f"cannot write the tuning record {path}: {exc.strerror or exc} (set {CACHE_ENV} "
                           "to a writable folder)") from exc
    return path
