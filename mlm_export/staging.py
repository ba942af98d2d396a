"""Staging: build an artifact in a temporary sibling, publish it with a rename, heal after crashes.

The rules (README, "Safety"):
- An existing destination is replaced only with `force`, and only when it is an mlm-export artifact
  holding nothing but the files its manifest lists. The source model's directory, any directory
  above it, and the working directory (or one above it) are never replaced.
- A staging directory is named `.NAME.mlm-export-tmp-PID-XXXXXXXX` and holds `owner.json` (pid,
  host, process start time) beside the artifact being built. A kill -9 cannot be caught, so the
  next export into the same parent removes the stagings whose owner is gone, and says so.
- Nothing is deleted that this module did not create: parents it made are removed again (if still
  empty) after a failure, and a directory without our marker is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import ArtifactError, StorageError
from .interrupts import deferred_signals
from .manifest import MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE

log = logging.getLogger("mlm_export")

OWNER = "owner.json"
_STAGING = re.compile(r"^\.(?P<name>.+)\.mlm-export-(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[A-Za-z0-9_]{8}$")  # mlm-export <= 0.2.0: no owner recorded
_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_destination(out: Path, force: bool, protected: Sequence[Path] = ()) -> None:
    """Refuse, before any slow work, an `out` that exists and may not be replaced."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    real = out.resolve()
    if not real.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ArtifactError(f"{out} is {'the' if real == cwd else 'above the'} current directory; "
                            "mlm-export never replaces it. Choose another --out, e.g. models/NAME")
    for source in protected:
        source = Path(source).resolve()
        if real == source or real in source.parents:
            raise ArtifactError(f"{out} {'is' if real == source else 'contains'} the source model "
                                f"directory {source}; mlm-export never replaces it. Choose another --out")
    foreign = _foreign_entries(real, out)
    if foreign:
        raise ArtifactError(f"{out} holds files that are not part of its artifact ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}); --force only replaces what "
                            "mlm-export wrote. Move them, or choose another --out")
    if not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace that artifact")


def _foreign_entries(real: Path, out: Path) -> list[str]:
    """Entries of an artifact directory its manifest does not account for; refuses a non-artifact."""
    path = real / MANIFEST
    if not path.is_file() or path.is_symlink():
        raise ArtifactError(f"{out} already exists and is not an mlm-export artifact (no {MANIFEST}); "
                            "mlm-export only replaces its own artifacts. Choose another --out")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        manifest = json.loads(path.read_bytes().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(manifest["format_version"], int) or not isinstance(files, dict):
            raise ValueError("not a manifest")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{out} already exists and its {MANIFEST} is not an mlm-export manifest "
                            f"({exc}); mlm-export only replaces its own artifacts. Choose another --out") from exc
    allowed = set(files) | {MANIFEST, MANIFEST + ".tmp", SIGNATURE, SIGNATURE + ".tmp"}
    return sorted(entry.name for entry in real.iterdir() if entry.name not in allowed)


def estimate_free_space(parent: Path, need: int) -> None:
    """Refuse to start an export that would fill the disk halfway through."""
    free = shutil.disk_usage(parent).free
    if free < need:
        raise StorageError(f"{parent} has {_size(free)} free; this export needs about {_size(need)}. "
                           "Free some space or choose another --out")


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool, protected: Sequence[Path] = (),
                     need_bytes: int = 0) -> Iterator[Path]:
    """Yield an empty directory to build in; it replaces `out` only if the block succeeds."""
    out = Path(out)
    check_destination(out, force, protected)
    parent = Path(os.path.abspath(out)).parent
    made = _make_parents(parent)
    try:
        heal_stale_stagings(parent)
        if need_bytes:
            estimate_free_space(parent, need_bytes)
        staging = _new_staging(parent, out.name, "tmp")
        try:
            build = staging / out.name
            build.mkdir()
            yield build
            with deferred_signals():
                _publish(build, out, force, protected)
        except BaseException as exc:
            space = _space_error(exc)
            if space is not None:
                raise StorageError(f"ran out of disk space while writing the artifact in {parent} "
                                   f"({space.strerror}; {_size(shutil.disk_usage(parent).free)} free "
                                   "now). Nothing was written; free some space or choose another "
                                   "--out") from exc
            raise
        finally:
            with deferred_signals():
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if still empty: never more than we created
        raise


def _publish(build: Path, out: Path, force: bool, protected: Sequence[Path]) -> None:
    if not os.path.lexists(out):
        os.replace(build, out)
        return
    check_destination(out, force, protected)  # it may have appeared or changed while we built
    old = _new_staging(out.parent, out.name, "old")
    os.replace(out, old / out.name)
    try:
        os.replace(build, out)
    except OSError:
        os.replace(old / out.name, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _make_parents(parent: Path) -> list[Path]:
    """Create the missing directories above `out`, returning them so a failure can remove them."""
    missing = []
    probe = parent
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"cannot create {parent}: {probe} is not a directory")
    made = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except OSError as exc:
            for done in reversed(made):
                with contextlib.suppress(OSError):
                    done.rmdir()
            raise StorageError(f"cannot create {directory}: {exc.strerror}; choose another --out") from exc
        made.append(directory)
    return made


def _new_staging(parent: Path, name: str, kind: str) -> Path:
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.mlm-export-{kind}-{os.getpid()}-", dir=parent))
        (staging / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "start": _start_time(os.getpid())}))
    except OSError as exc:
        raise StorageError(f"cannot write in {parent}: {exc.strerror}. mlm-export builds the artifact "
                           "beside --out and renames it into place; choose a writable --out") from exc
    return staging


def heal_stale_stagings(parent: Path) -> None:
    """Remove stagings whose exporting process is gone; restore an artifact a crash left aside."""
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match is None:
            if _LEGACY.match(entry.name) and entry.is_dir():
                log.warning("found %s, probably left by a killed export of mlm-export 0.2 or older; "
                            "remove it by hand once no export is running", entry)
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        if not (entry / OWNER).exists() and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                entry.rmdir()  # killed between creating it and writing the marker; rmdir needs it empty
            continue
        if _owner_alive(entry / OWNER):
            continue
        kept, target = entry / match["name"], parent / match["name"]
        if match["kind"] == "old" and kept.is_dir() and not os.path.lexists(target):
            os.replace(kept, target)  # killed between moving the old artifact aside and publishing
            log.warning("restored %s, which an export (pid %s) killed mid-replacement had moved aside",
                        target, match["pid"])
        size = _tree_size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        log.warning("removed %s (%s), left by an export (pid %s) that was killed", entry, _size(size),
                    match["pid"])


def _owner_alive(marker: Path) -> bool:
    """False only when we can tell: a marker of ours, from this host, whose process is gone."""
    try:
        owner = json.loads(marker.read_text())
        pid, host, start = int(owner["pid"]), str(owner["host"]), owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return True  # no readable marker: not ours, or still being created; leave it alone
    if host != socket.gethostname():
        return True  # another machine's pid says nothing here
    if not _pid_alive(pid):
        return False
    now = _start_time(pid)
    return start is None or now is None or now == start  # a different start: the pid was reused


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by someone else (or a pid we cannot judge)
    return not _is_zombie(pid)  # a zombie was killed and is only waiting to be reaped


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses


def _start_time(pid: int) -> int | None:
    """Clock ticks since boot when `pid` started (Linux); tells a reused pid from the original."""
    fields = _proc_stat(pid)
    return None if fields is None or _is_zombie(pid) else int(fields[19])


def _is_zombie(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] in ("Z", "X")


def _space_error(exc: BaseException) -> OSError | None:
    """The out-of-space OSError behind `exc`, even when a library wrapped it in its own error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _SPACE:
            return current
        current = current.__cause__ or current.__context__
    return None


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
