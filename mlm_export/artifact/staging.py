"""Staging: build an artifact in a temporary sibling, publish it with a rename, heal after crashes.

The rules (README, "Safety"):
- An existing destination is replaced only with `force`, and only when it is an mlm-export artifact
  holding nothing but the files its manifest lists. The source model's directory, any directory
  above it, the working directory (or one above it) and a symlink are never replaced.
- A staging directory is named `.NAME.mlm-export-tmp-PID-XXXXXXXX`. It holds `owner.json` (pid,
  host, process start time), locked for as long as its export runs, beside `artifact/`, the
  directory being built. A kill -9 cannot be caught, so the next export into the same parent
  removes the stagings whose owner is gone (the lock is free and the pid is dead or reused), and
  says so.
- Nothing is deleted that this module did not create: parents it made are removed again (if still
  empty) after a failure, and a staging without our marker is at most `rmdir`ed (only if empty).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ArtifactError, StorageError
from ..interrupts import deferred_signals
from ..manifest import FORMAT_VERSION, MANIFEST, SIGNATURE, SLIM, check_plain_name, read_manifest

log = logging.getLogger("mlm_export")

OWNER = "owner.json"
BUILD = "artifact"  # inside a staging: the directory that is renamed to --out
_STAGING = re.compile(r"^\.(?P<name>.+)\.mlm-export-(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_LEGACY = re.compile(r"^\..+\.(tmp|old)-[A-Za-z0-9_]{8}$")  # mlm-export <= 0.2.0: no owner recorded
_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True)
class Owner:
    """Who created a staging: enough to tell, later, whether that process is gone."""

    pid: int
    host: str
    start: int | None  # clock ticks after boot when the process started (Linux); tells a reused pid
    target: str | None = None  # the full name of --out (the staging's name holds at most 64 characters)

    @classmethod
    def me(cls, target: str) -> Owner:
        return cls(os.getpid(), socket.gethostname(), _start_time(os.getpid()), target)

    @classmethod
    def read(cls, path: Path) -> Owner | None:
        try:
            if path.stat().st_size > 64 * 1024:
                return None
            data = json.loads(path.read_text())
            start, target = data.get("start"), data.get("target")
            return cls(int(data["pid"]), str(data["host"]), None if start is None else int(start),
                       target if isinstance(target, str) and target and "/" not in target else None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    def gone(self) -> bool:
        """True only when we can tell: same host, and the pid is dead or now names another process."""
        if self.host != socket.gethostname():
            return False  # another machine's pid says nothing here
        if not _pid_alive(self.pid):
            return True
        now = _start_time(self.pid)
        return self.start is not None and now is not None and now != self.start


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))  # unlike Path.resolve(), never raises on a symlink loop


def _target(out: Path) -> Path:
    """`out` with `.`, `..` and linked parents resolved; a link as the last part stays a link."""
    if out.name in ("", ".", ".."):
        return _real(out)  # "nonexistent/.." is the current directory, not a folder named ".."
    return _real(out.parent) / out.name


def check_destination(out: Path, force: bool, protected: Sequence[Path] = ()) -> None:
    """Refuse, before any slow work, an `out` that exists and may not be replaced."""
    out = Path(out)
    target = _target(out)
    if not os.path.lexists(target):
        return
    if target.is_symlink():
        raise ArtifactError(f"{out} is a symlink (to {os.readlink(target)}); mlm-export does not replace "
                            "links. Pass the directory it points to, or remove the link")
    real = _real(target)
    if not real.is_dir():
        raise ArtifactError(f"{out} exists and is not a directory; choose another --out")
    cwd = _real(Path.cwd())
    if real == cwd or real in cwd.parents:
        raise ArtifactError(f"{out} is {'the' if real == cwd else 'above the'} current directory; "
                            "mlm-export never replaces it. Choose another --out, e.g. models/NAME")
    for source in protected:
        source = _real(Path(source))
        if real == source or real in source.parents:
            raise ArtifactError(f"{out} {'is' if real == source else 'contains'} the source model "
                                f"directory {source}; mlm-export never replaces it. Choose another --out")
    foreign = _foreign_entries(target, out)
    if foreign:
        raise ArtifactError(f"{out} holds files that are not part of its artifact ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}); --force only replaces what "
                            "mlm-export wrote. Move them, or choose another --out")
    if not force:
        raise ArtifactError(f"{out} already exists; pass --force to replace that artifact")


def _foreign_entries(target: Path, out: Path) -> list[str]:
    """Entries of an artifact its manifest does not account for; refuses a directory that is no artifact."""
    if not (target / MANIFEST).exists():
        raise ArtifactError(f"{out} already exists and is not an mlm-export artifact (no {MANIFEST}); "
                            "mlm-export only replaces its own artifacts. Choose another --out")
    try:
        files: set[str] | None = set(read_manifest(target).files)
    except ArtifactError as exc:
        files = _older_artifact_files(target)  # format 1 (mlm-export 0.2, 0.3) is still ours to replace
        if files is None:
            raise ArtifactError(f"{out} already exists and does not hold a valid mlm-export manifest; "
                                "mlm-export only replaces its own artifacts. Choose another --out, or "
                                f"remove it yourself. The manifest's problem: {exc}") from exc
    ours = set(files or ()) | {MANIFEST, MANIFEST + ".tmp", SIGNATURE, SIGNATURE + ".tmp", SLIM}
    return sorted(entry.name for entry in target.iterdir()
                  if entry.name not in ours or (entry.is_dir() and not entry.is_symlink()))


def _older_artifact_files(target: Path) -> set[str] | None:
    """The file names an artifact of an earlier format lists, if its manifest is one of ours."""
    try:
        data = json.loads((target / MANIFEST).read_bytes().decode("utf-8"))
        version, files = data["format_version"], data["files"]
        if not (isinstance(version, int) and 1 <= version < FORMAT_VERSION and isinstance(files, dict)):
            return None
        return {check_plain_name(name, "files") for name in files}
    except (OSError, ValueError, KeyError, TypeError, RecursionError, ArtifactError):
        return None


def prepare_destination(out: Path, force: bool, protected: Sequence[Path] = ()) -> None:
    """Heal what killed exports left beside `out`, then refuse an `out` that may not be replaced."""
    parent = _target(Path(out)).parent
    if parent.is_dir():
        heal_stale_stagings(parent)  # first: it may put back an artifact that a crash moved aside
    check_destination(out, force, protected)


def estimate_free_space(parent: Path, need: int) -> None:
    """Refuse to start an export that would fill the disk halfway through."""
    free = shutil.disk_usage(parent).free
    if free < need:
        raise StorageError(f"{parent} has {_size(free)} free; this export needs about {_size(need)}. "
                           "Free some space or choose another --out")


@contextlib.contextmanager
def atomic_directory(out: Path, force: bool, protected: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield an empty directory to build in; it replaces `out` only if the block succeeds.

    Creating the staging directory first proves that `out`'s parent is writable before any slow work.
    """
    out = Path(out)
    prepare_destination(out, force, protected)
    target = _target(out)
    parent = target.parent
    made = make_directories(parent)
    try:
        with _staging(parent, target.name, "tmp") as staging:
            build = staging / BUILD
            try:
                build.mkdir()
                yield build
                with deferred_signals():
                    _publish(build, target, force, protected)
            except BaseException as exc:
                space = _space_error(exc)
                if space is not None:
                    raise StorageError(f"ran out of disk space while writing the artifact in {parent} "
                                       f"({space.strerror}; {_size(shutil.disk_usage(parent).free)} free "
                                       "now). Nothing was written; free some space or choose another "
                                       "--out") from exc
                raise
    except BaseException:
        remove_directories(made)  # never more than we created
        raise


def _publish(build: Path, out: Path, force: bool, protected: Sequence[Path]) -> None:
    if not os.path.lexists(out):
        os.replace(build, out)
        return
    check_destination(out, force, protected)  # it may have appeared or changed while we built
    with _staging(out.parent, out.name, "old") as old:
        os.replace(out, old / BUILD)
        try:
            os.replace(build, out)
        except OSError:
            os.replace(old / BUILD, out)
            raise


@contextlib.contextmanager
def _staging(parent: Path, name: str, kind: str) -> Iterator[Path]:
    """A marked, locked sibling directory, removed with everything in it when the block ends."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{name[:64]}.mlm-export-{kind}-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise StorageError(f"cannot write in {parent}: {exc.strerror}. mlm-export builds the artifact "
                           "beside --out and renames it into place; choose a writable --out") from exc
    try:
        with open(staging / OWNER, "w") as marker:
            # held for the whole export: a free lock later means its owner is gone, whatever the pid says
            with contextlib.suppress(OSError):
                fcntl.flock(marker.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            marker.write(json.dumps(asdict(Owner.me(name))))
            marker.flush()
            yield staging
    finally:
        with deferred_signals():
            shutil.rmtree(staging, ignore_errors=True)


def make_directories(path: Path) -> list[Path]:
    """Create `path` and its missing parents, returning those made, so that a failure removes only
    what this process created (`remove_directories`)."""
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"cannot create {path}: {probe} is not a directory")
    made: list[Path] = []
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise StorageError(f"cannot create {path}: {directory} is not a directory") from None
            continue  # created by someone else meanwhile: not ours to remove
        except OSError as exc:
            remove_directories(made)
            raise StorageError(f"cannot create {directory}: {exc.strerror}") from exc
        made.append(directory)
    return made


def remove_directories(made: Sequence[Path]) -> None:
    """Remove directories `make_directories` made, newest first, each only if still empty."""
    for directory in reversed(made):
        with contextlib.suppress(OSError):
            directory.rmdir()


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
        if not (entry / OWNER).exists():
            if not _pid_alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    entry.rmdir()  # killed before it wrote its marker; rmdir only removes it empty
            continue
        owner = _stale_owner(entry / OWNER)
        if owner is None:
            continue
        kept, target = entry / BUILD, parent / (owner.target or match["name"])
        if match["kind"] == "old" and kept.is_dir() and not os.path.lexists(target):
            try:
                os.replace(kept, target)  # killed between moving the old artifact aside and publishing
                log.warning("restored %s, which an export (pid %s) killed mid-replacement had moved aside",
                            target, match["pid"])
            except OSError as exc:
                log.warning("could not restore %s from %s: %s", target, kept, exc.strerror)
                continue
        size = _tree_size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if os.path.lexists(entry):
            log.warning("could not remove %s, left by an export (pid %s) that was killed", entry, match["pid"])
        else:
            log.warning("removed %s (%s), left by an export (pid %s) that was killed", entry, _size(size),
                        match["pid"])


def _stale_owner(marker: Path) -> Owner | None:
    """The owner recorded in `marker` if its lock is free and it is known to be gone; else None."""
    try:
        with open(marker) as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return None  # held: its export is running, in this pid namespace or another
    except OSError:
        pass  # no locks on this filesystem: judge by the marker alone
    owner = Owner.read(marker)
    return owner if owner is not None and owner.gone() else None


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
    fields = _proc_stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else int(fields[19])


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
