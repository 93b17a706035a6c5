"""Stage, then use. A client file that a third-party library will open (task data for `datasets`,
config.json and tokenizer files for transformers) is read once through fileguard (resolved,
inside the roots, no link followed, the open descriptor checked) and copied into a private
folder this process owns (mode 0700); the library is given only the copy. Nothing is checked
and then opened by name, so a file swapped for a link after the check is never followed, and a
missing file is an error, not "nothing to check".

Large weight files are not copied: a staged folder holds a link to the checked descriptor's
/proc entry (``/proc/self/fd/N``), which reopens that very file whatever happens to its name,
for as long as the folder is in use."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path

from evaluators.security import fileguard
from evaluators.security.fileguard import Roots

MAX_STAGED_BYTES = 4 << 30  # task data and tokenizer files of one study; weights are linked, not copied
MAX_STAGED_FILES = 10_000
_CHUNK = 1 << 20


class StagingError(ValueError):
    """A file that cannot be staged: missing, not a regular file, or over the budget."""


class Staging:
    """A private folder of copies; removed on ``close()`` or when garbage collected."""

    def __init__(self, max_bytes: int = MAX_STAGED_BYTES, max_files: int = MAX_STAGED_FILES) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mergeopt-staged-"))  # mkdtemp: mode 0700
        self.max_bytes, self.max_files = max_bytes, max_files
        self.used = self.files = self._folders = 0
        self._fds: list[int] = []
        self._cleanup = weakref.finalize(self, _remove, self.root, self._fds)

    def folder(self, name: str = "") -> Path:
        """A new empty folder inside the staging folder."""
        self._folders += 1
        path = self.root / f"{self._folders}{'-' + name[:40] if name else ''}"
        path.mkdir(mode=0o700)
        return path

    def copy(self, src: str | Path, roots: Roots, dest: Path, what: str = "file") -> Path:
        """``src`` read through fileguard into ``dest`` (a new file inside this folder)."""
        fd = _open_checked(src, roots, what)
        self.files += 1
        if self.files > self.max_files:
            os.close(fd)
            raise StagingError(f"{what} {src}: more than {self.max_files} files to stage")
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(fd, "rb") as fh, os.fdopen(os.open(dest, flags, 0o600), "wb") as out:
            while chunk := fh.read(_CHUNK):
                self.used += len(chunk)
                if self.used > self.max_bytes:
                    raise StagingError(f"{what} {src}: the files to stage exceed {self.max_bytes} bytes")
                out.write(chunk)
        return dest

    def link(self, src: str | Path, roots: Roots, dest: Path, what: str = "file") -> Path:
        """``dest`` becomes a link to the checked descriptor of ``src``, held open until close()."""
        fd = _open_checked(src, roots, what)
        self._fds.append(fd)
        if fileguard.fd_path(fd) is None:  # no /proc: copy instead (small pools, other systems)
            self._fds.remove(fd)
            os.close(fd)
            return self.copy(src, roots, dest, what)
        os.symlink(f"/proc/{os.getpid()}/fd/{fd}", dest)
        return dest

    def close(self) -> None:
        self._cleanup()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_checked(src: str | Path, roots: Roots, what: str) -> int:
    """A descriptor of ``src`` opened through fileguard; a refusal as fileguard says it, any other
    failure as a StagingError naming the file and the reason (never its contents)."""
    try:
        return fileguard.open_file(src, roots, what)
    except FileNotFoundError as exc:
        raise StagingError(f"{what} {src} does not exist") from exc
    except fileguard.FileRefused:
        raise
    except OSError as exc:
        raise StagingError(f"{what} {src}: cannot read it ({exc.strerror or type(exc).__name__})") from exc


def _remove(root: Path, fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
    shutil.rmtree(root, ignore_errors=True)
