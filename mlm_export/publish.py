"""Output files appear whole, under their own name, and never over a file mlm-export did not write.

Every command that writes a file (`score -o`, `keygen`; directories have `artifact.staging`) writes
it under a temporary name beside the destination and publishes it when complete:
- without `force`, with a hard link, which fails when the name is taken: a file that appeared there
  during the run (a user's, a second run's) is left untouched, where a check at the start and a
  rename at the end would replace it;
- with `force`, with a rename, which replaces the old file in one step.
A destination that is a character device or a FIFO (`/dev/stdout`, a named pipe) is written as a
stream: there is nothing to replace and nothing to publish.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any

from .errors import ArtifactError, InputError, StorageError

__all__ = ["OutputFile", "is_stream"]


def is_stream(path: Path) -> bool:
    """A character device or FIFO (`/dev/stdout`, a named pipe): written in place, never replaced."""
    try:
        mode = Path(path).stat().st_mode
    except OSError:  # absent, or a dangling link: a file to create
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)


class OutputFile:
    """One output file, from its checks at the start to its publication (or removal) at the end.

    `option` names the setting that chose the path in messages ("--output", "key path"); `force_option`
    the flag that replaces a file (None: the command never replaces one). `keep_on_clash`: a file that
    took the name meanwhile leaves ours under a name of its own (scores); False removes ours (a key).
    """

    def __init__(self, path: Path, *, force: bool = False, mode: int = 0o666, option: str = "--output",
                 force_option: str | None = "--force", keep_on_clash: bool = True) -> None:
        self.path = Path(path)
        self.force = force
        self.mode = mode
        self.option = option
        self.force_option = force_option
        self.keep_on_clash = keep_on_clash
        self.stream = False  # a device or FIFO: written in place
        self._tmp: Path | None = None
        if not self.path.name or self.path.name in (".", ".."):
            raise InputError(f"{option} {str(path)!r} is not a file name")
        if is_stream(self.path):
            self.stream = True
            return
        if self.path.is_dir():
            raise InputError(f"{self.path} is a directory; {option} names a file")
        if os.path.lexists(self.path) and not force:
            how = f"pass {force_option} to replace it, or " if force_option else ""
            raise InputError(f"{self.path} exists; {how}choose another {option}")
        if not self.path.parent.is_dir():
            raise InputError(f"the folder of {self.path} does not exist; create it or choose another {option}")
        if not os.access(self.path.parent, os.W_OK | os.X_OK):  # found now, not after the work that fills it
            raise InputError(f"the folder of {self.path} is not writable; choose another {option}")

    @property
    def target(self) -> Path:
        """Where the bytes go now: the temporary name (created by `open`), or the stream itself."""
        if self.stream:
            return self.path
        if self._tmp is None:
            self._tmp = self.path.parent / f".{self.path.name}.mlm-export-tmp-{os.getpid()}-{secrets.token_hex(3)}"
        return self._tmp

    def open(self, binary: bool = False) -> IO[Any]:
        """The file to write, created exclusively (with `mode`, before any byte is in it)."""
        encoding = None if binary else "utf-8"
        try:
            if self.stream:
                return open(self.path, "wb" if binary else "w", encoding=encoding)
            fd = os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode)
            return os.fdopen(fd, "wb" if binary else "w", encoding=encoding)
        except OSError as exc:
            self.discard()
            raise self.storage_error(exc) from exc

    def storage_error(self, exc: OSError) -> StorageError:
        """An `OSError` while writing, as the error a user can act on (no space, read-only, permissions)."""
        return StorageError(f"cannot write {self.path}: {exc.strerror or exc}")

    def publish(self) -> Path:
        """Give the finished file its name; without `force`, only if the name is still free."""
        tmp, self._tmp = self._tmp, None
        if self.stream or tmp is None:
            return self.path
        if self.force:
            return self._rename(tmp)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise self._clash(tmp) from None
        except OSError:  # a file system without hard links: check, then rename (racier, the best it allows)
            if os.path.lexists(self.path):
                raise self._clash(tmp) from None
            return self._rename(tmp)
        tmp.unlink(missing_ok=True)  # the name is published: the temporary one is only a second link
        return self.path

    def _rename(self, tmp: Path) -> Path:
        try:
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self.storage_error(exc) from exc
        return self.path

    def _clash(self, tmp: Path) -> ArtifactError:
        """A file took the name while ours was written: it is left untouched; ours is kept aside or removed."""
        if not self.keep_on_clash:
            tmp.unlink(missing_ok=True)
            return ArtifactError(f"{self.path} appeared while mlm-export was writing it; it was left untouched "
                                 f"and nothing was written. Choose another {self.option}")
        return ArtifactError(f"{self.path} appeared while mlm-export was writing it, and mlm-export does not "
                             f"replace a file without {self.force_option or 'being asked'}: it was left "
                             f"untouched. The output is in {self._keep(tmp)}")

    def _keep(self, tmp: Path) -> Path:
        """The finished file under a visible name of its own (the temporary one if that is taken too)."""
        kept = self.path.with_name(f"{self.path.stem}.mlm-export-{os.getpid()}{self.path.suffix}")
        try:
            os.link(tmp, kept)
        except OSError:
            return tmp
        tmp.unlink()
        return kept

    def discard(self) -> None:
        """Remove what was written (the temporary file: ours alone)."""
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            tmp.unlink(missing_ok=True)
