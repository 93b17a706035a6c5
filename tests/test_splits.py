"""Search and validation documents: deterministic, disjoint, stable when documents are appended."""

import random

from evaluators.scoring.splits import prefix, split_documents


def docs(n, seed=0):
    rng = random.Random(seed)
    return [{"q": f"{rng.random():.12f}", "choices": ["a", "b"], "label": i % 2} for i in range(n)]


def test_split_is_deterministic_disjoint_and_complete():
    d = docs(500)
    a, b = split_documents(d, 0.4), split_documents(list(d), 0.4)
    assert a == b
    assert not set(a.search) & set(a.validation)
    assert sorted(a.search + a.validation) == list(range(500))
    assert 0.33 < len(a.validation) / 500 < 0.47  # a fraction, by hash
    # Not by position: the held-out documents are spread over the whole task.
    assert min(a.validation) < 50 and max(a.validation) > 450


def test_split_is_stable_when_documents_are_appended():
    d = docs(300)
    before = split_documents(d, 0.3)
    after = split_documents(d + docs(200, seed=1), 0.3)
    assert set(before.validation) == {i for i in after.validation if i < 300}
    assert set(before.search) == {i for i in after.search if i < 300}


def test_a_document_and_its_copy_land_in_the_same_split():
    d = docs(200)
    s = split_documents(d + [dict(x) for x in d], 0.5)
    held = set(s.validation)
    assert all((i in held) == (i + 200 in held) for i in range(200))


def test_counts_limits_prefixes_and_off():
    d = docs(100)
    s = split_documents(d, 30)
    assert len(s.validation) == 30 and len(s.search) == 70
    limited = split_documents(d, 0.5, limit=10)
    full = split_documents(d, 0.5)
    assert limited.search == full.search[:10] and limited.validation == full.validation[:10]
    assert split_documents(d, 0).validation == [] and split_documents(d, 0).search == list(range(100))
    assert prefix(full.search, 0.25) == full.search[: len(full.search) // 4]
    assert split_documents(docs(3), 0.01).validation and split_documents(docs(3), 0.99).search
