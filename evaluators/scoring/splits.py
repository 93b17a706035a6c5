"""Search and validation documents of a task.

A document's split is decided by a stable hash of its content, not by its position, so adding
documents to a task never moves an existing one to the other split, and two copies of one
document always land together (no leak between the splits)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def doc_hash(doc) -> float:
    """A document's place in [0, 1), from its content."""
    text = json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Split:
    search: list[int]  # document indices, ascending
    validation: list[int]

    def indices(self, split: str) -> list[int]:
        return self.validation if split == "validation" else self.search


def split_documents(docs: Iterable, validation: float | int, limit: int | float | None = None) -> Split:
    """``validation``: a fraction (0 < f < 1) of the documents, by hash; or a count, the documents
    with the lowest hashes; 0 puts every document in the search split. ``limit`` (a count, or a
    fraction below 1) then applies to each split: its first documents."""
    hashes = [doc_hash(d) for d in docs]
    if not validation:
        held = set()
    elif isinstance(validation, float) and validation < 1:
        held = {i for i, h in enumerate(hashes) if h < validation}
        by_hash = sorted(range(len(hashes)), key=hashes.__getitem__)
        if len(hashes) >= 2 and not held:  # a tiny task: each split gets at least one document
            held = {by_hash[0]}
        elif len(hashes) >= 2 and len(held) == len(hashes):
            held.discard(by_hash[-1])
    else:
        held = set(sorted(range(len(hashes)), key=hashes.__getitem__)[: int(validation)])
    search = [i for i in range(len(hashes)) if i not in held]
    return Split(_limited(search, limit), _limited(sorted(held), limit))


def _limited(indices: Sequence[int], limit: int | float | None) -> list[int]:
    if limit is None:
        return list(indices)
    n = math.ceil(len(indices) * limit) if isinstance(limit, float) and limit < 1 else int(limit)
    return list(indices[:n])


def prefix(indices: Sequence[int], fraction: float) -> list[int]:
    """The first ``fraction`` of a split (the documents of a low-fidelity rung); at least one."""
    if fraction >= 1:
        return list(indices)
    return list(indices[: max(1, int(len(indices) * fraction))])
