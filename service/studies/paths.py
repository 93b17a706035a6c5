"""Server-side paths must lie under the configured allowed roots, after resolving symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from evaluators.security.fileguard import refusal


class PathNotAllowed(ValueError):
    """A path outside the allowed roots (or relative, or with '..')."""


def guard_path(path: str | Path, roots: list[Path], *, what: str = "path") -> Path:
    raw = Path(path)
    if not raw.is_absolute():
        raise PathNotAllowed(f"{what} {path!s} must be absolute")
    if ".." in raw.parts:
        raise PathNotAllowed(f"{what} {path!s} must not contain '..'")
    if "\0" in str(path) or any(len(os.fsencode(part)) > 255 for part in raw.parts):  # else OSError later: a 500
        raise PathNotAllowed(f"{what} {str(path)[:200]!r} has a NUL byte or a name longer than 255 bytes")
    real = raw.resolve(strict=False)  # follows every symlink on the way
    if why := refusal(real, roots):
        shown = ", ".join(str(r) for r in roots)
        via = "" if real == raw else f" (resolves to {real})"
        why = f"is {why} ({shown})" if why.startswith("outside") else f"is refused: {why.removeprefix('which is ')}"
        raise PathNotAllowed(f"{what} {path!s}{via} {why}")
    return real


def guard_tree(directory: Path, roots: list[Path], *, what: str = "path") -> None:
    """Every file a checkpoint/task folder holds must also resolve inside the roots."""
    if directory.is_dir():
        for child in directory.iterdir():
            if child.is_symlink():
                guard_path(child, roots, what=f"{what} entry")
