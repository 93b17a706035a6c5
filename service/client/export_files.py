"""Unpacking an export download (a .tar.gz holding one folder) into the caller's folder."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from service.client.errors import MergeoptError


def unpack_into(chunks: Iterable[bytes], out: Path) -> Path:
    """Stream the archive to a temporary file beside ``out``, extract it with tarfile's 'data'
    filter (no links out, no absolute paths, no devices) and move its one folder's files into
    ``out``. Nothing is left behind on failure."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".mergeopt-export-", dir=out.parent) as tmp:
        archive = Path(tmp) / "export.tar.gz"
        with archive.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
        unpacked = Path(tmp) / "unpacked"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise MergeoptError(f"the export download is not a readable archive: {exc}") from None
        folders = [p for p in unpacked.iterdir() if p.is_dir()]
        if len(folders) != 1:
            raise MergeoptError("the export download does not hold exactly one folder")
        out.mkdir(exist_ok=True)
        for item in folders[0].iterdir():
            shutil.move(str(item), out / item.name)
    return out
