"""Files checked where they are used. Pool folders may hold links and may change after they
were registered, so a path is resolved, compared with the allowed roots and opened in one step,
and the open descriptor is checked again (a regular file; its real path, from /proc/self/fd,
inside the roots): a link swapped in after registration, or between the check and the open, is
refused rather than followed. Exports are written into a fresh directory, created and filled
through directory descriptors (never by name), and renamed into place only when complete.

``roots=None`` (the CLI, run by the operator) skips the root comparison and keeps the rest."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

Roots = Sequence[Path] | None
# Files that travel with the weights so the folder loads on its own (tokenizer, configs).
SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
    "chat_template.jinja", "chat_template.json",
)
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class FileRefused(PermissionError):
    """A path outside the allowed roots, a link where none may be, or not a regular file."""


class TargetExists(FileExistsError):
    """The export target exists (a file, or a folder that is not empty)."""


# Never opened for a client, whatever the roots: the service's own settings and secrets (the
# .env it reads, its SQLite database; configure() adds them) and, unless allowed, hidden files.
SECRET_NAMES = frozenset({".env"})
_policy: dict = {"allow_hidden": False, "private": frozenset()}


def configure(*, allow_hidden: bool = False, private: Sequence[Path] = ()) -> None:
    """The service's file policy (service/settings.py: MERGEOPT_ALLOW_HIDDEN, its own files)."""
    _policy["allow_hidden"] = allow_hidden
    _policy["private"] = frozenset(Path(os.path.realpath(p)) for p in private)


def within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def refusal(real: Path, roots: Sequence[Path]) -> str | None:
    """Why a client may not use the resolved path ``real`` (None: it may)."""
    inside = [r for r in roots if real == r or real.is_relative_to(r)]
    if not inside:
        return "outside the allowed roots"
    if real.name in SECRET_NAMES or real in _policy["private"]:
        return "which is a settings or secrets file of the service"
    if not _policy["allow_hidden"] and all(any(p.startswith(".") for p in real.relative_to(r).parts) for r in inside):
        return "which is hidden (a name starting with '.'; MERGEOPT_ALLOW_HIDDEN=1 allows them)"
    return None


def fd_path(fd: int) -> Path | None:
    """The real path of an open descriptor; None where the OS does not say (no /proc)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _resolved(path: Path, roots: Roots, what: str) -> Path:
    real = Path(os.path.realpath(path))
    if roots is not None and (why := refusal(real, roots)):
        raise FileRefused(f"{what} {path} resolves to {real}, {why}")
    return real


def _check_open(fd: int, real: Path, path: Path, roots: Roots, what: str) -> None:
    if roots is None:
        return
    now = fd_path(fd)
    if now is None:  # no /proc: the descriptor must still be the file the resolved path names
        st, named = os.fstat(fd), os.stat(real, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (named.st_dev, named.st_ino):
            raise FileRefused(f"{what} {path} changed while it was opened")
        now = real
    if why := refusal(now, roots):
        raise FileRefused(f"{what} {path} resolves to {now}, {why}")


def _open(path: Path, flags: int, roots: Roots, what: str) -> int:
    real = _resolved(path, roots, what)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(real):
            raise FileRefused(f"{what} {path} became a symbolic link while it was opened") from exc
        raise
    try:
        _check_open(fd, real, path, roots, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str | Path, roots: Roots, what: str = "file") -> int:
    """A read-only descriptor of a regular file that lies (after every link) inside ``roots``."""
    fd = _open(Path(path), _READ, roots, what)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(f"{what} {path} is not a regular file")
    return fd


@contextmanager
def opened(path: str | Path, roots: Roots, what: str = "file") -> Iterator[int]:
    fd = open_file(path, roots, what)
    try:
        yield fd
    finally:
        os.close(fd)


def read_bytes(path: str | Path, roots: Roots, what: str = "file") -> bytes:
    with opened(path, roots, what) as fd, os.fdopen(os.dup(fd), "rb") as fh:
        return fh.read()


@contextmanager
def by_name(path: str | Path, roots: Roots, what: str = "file") -> Iterator[str]:
    """A name for the checked file, for libraries that open files themselves: the descriptor's
    /proc entry, which reopens that very file whatever happens to ``path`` meanwhile."""
    with opened(path, roots, what) as fd:
        yield f"/proc/self/fd/{fd}" if fd_path(fd) is not None else os.path.realpath(path)


def _open_dir(parent_fd: int, name: str) -> int:
    return os.open(name, _DIR, dir_fd=parent_fd)


def _walk_to(directory: Path, roots: Roots, what: str) -> int:
    """A descriptor of ``directory``, creating missing folders one by one through descriptors,
    each a fresh real folder: a link planted on the way is refused, never followed."""
    missing: list[str] = []
    top = directory
    while not os.path.lexists(top) and top.parent != top:
        missing.append(top.name)
        top = top.parent
    fd = _open(top, _DIR, roots, what)
    try:
        for name in reversed(missing):
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = _open_dir(fd, name)
            except OSError as exc:
                raise FileRefused(f"{what} {directory}: {name} is a link or not a folder") from exc
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def fresh_dir(out: str | Path, roots: Roots, before_write=None) -> Iterator[int]:
    """A descriptor of a new empty folder beside ``out``; on success it is renamed to ``out``.
    ``out`` may be missing or an empty folder; a link, a file or a non-empty folder is refused
    (also when it turns into one before the rename: rename never follows the target)."""
    out = Path(os.path.abspath(out))
    try:
        parent = _walk_to(out.parent, roots, "out_dir's folder")
    except (FileNotFoundError, NotADirectoryError) as exc:  # a folder on the way vanished or is a file
        raise FileRefused(f"out_dir {out}: cannot make its folder ({exc.strerror})") from exc
    tmp = f".{out.name[:100]}.partial-{secrets.token_hex(6)}"
    made = False
    try:
        _check_target(parent, out)
        if before_write is not None:
            before_write(out)
        os.mkdir(tmp, 0o700, dir_fd=parent)
        made = True
        fd = _open_dir(parent, tmp)
        try:
            yield fd
            os.chmod(fd, 0o755)
        finally:
            os.close(fd)
        try:
            os.rename(tmp, out.name, src_dir_fd=parent, dst_dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                _check_target(parent, out)  # says which
                raise TargetExists(f"out_dir {out} appeared while the export was written") from exc
            raise
        made = False
    finally:
        if made:
            shutil.rmtree(tmp, dir_fd=parent, ignore_errors=True)
        os.close(parent)


def _check_target(parent: int, out: Path) -> None:
    try:
        st = os.stat(out.name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise FileRefused(f"out_dir {out} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise TargetExists(f"out_dir {out} exists and is not a folder")
    fd = _open_dir(parent, out.name)
    try:
        if os.listdir(fd):
            raise TargetExists(f"out_dir {out} exists and is not empty")
    finally:
        os.close(fd)


def new_file(dir_fd: int, name: str) -> int:
    """A new regular file in the folder ``dir_fd`` (O_EXCL: nothing planted there is followed)."""
    return os.open(name, _NEW, 0o644, dir_fd=dir_fd)


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    with os.fdopen(new_file(dir_fd, name), "wb") as fh:
        fh.write(data)
