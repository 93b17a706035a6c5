"""`mergeopt merge` on a hostile mergekit YAML (issue 20, finding 10a): an alias bomb ran past
60 s at 5.3 GB (the error message formatted the expanded value). Now the config is read under
a node, depth and character budget before anything is built, and values in errors are cut."""

from __future__ import annotations

import time

import pytest

from evaluators.merging.mergekit_yaml import MergeConfigError, parse_mergekit_yaml

LAUGHS = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
                   + ["merge_method: linear", "models: *a9"]) + "\n"
WIDE = "s: &s '" + "x" * 200_000 + "'\nmerge_method: linear\nmodels: [" + ", ".join(["*s"] * 2000) + "]\n"


@pytest.mark.parametrize(("text", "reason"), [(LAUGHS, "aliases are expanded"), (WIDE, "characters"),
                                              ("models: &m [*m]\n", "recursive"),
                                              ("models: " + "[" * 100 + "]" * 100 + "\n", "nested")],
                         ids=["billion-laughs", "long-strings-aliased", "recursive", "deep"])
def test_alias_bombs_are_refused_in_well_under_a_second(tmp_path, text, reason):
    t0 = time.perf_counter()
    with pytest.raises(MergeConfigError, match=reason) as info:
        parse_mergekit_yaml(text, tmp_path)
    assert time.perf_counter() - t0 < 1.0 and len(str(info.value)) < 500


def test_a_huge_value_in_an_error_is_cut(tmp_path):
    with pytest.raises(MergeConfigError) as info:
        parse_mergekit_yaml("merge_method: linear\nmodels: [" + "'" + "y" * 500_000 + "']\n", tmp_path)
    assert len(str(info.value)) < 500 and "(cut)" in str(info.value)
