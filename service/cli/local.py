"""What the CLI's local mode (no --server) shares between its commands."""

from __future__ import annotations

from pathlib import Path


def stored_url(ref: str, storage: str | None) -> str:
    """The storage a reader (front, export) opens, picked as open_study picks it, and checked:
    a SQLite file that does not exist is refused, not created empty."""
    from optimizer.spec import DEFAULT_STORAGE, load_spec
    from optimizer.storage import check_url

    is_yaml = ref.endswith((".yaml", ".yml")) or Path(ref).is_file()
    url = storage or (load_spec(ref).storage if is_yaml else DEFAULT_STORAGE)
    check_url(url, must_exist=True)
    return url
