"""optimizer/attrs.py is the stored format: studies written by earlier versions are read with
these names, so their values may never change (new names may be added)."""

from __future__ import annotations

from optimizer import attrs as K
from optimizer import records, validation

STORED = {
    "A_SPEC": "spec", "A_IDENTITY": "identity", "A_REFS": "references", "A_FRONT": "front",
    "A_DIRECTIONS": "directions", "A_NOISE": "noise", "A_VREFS": "validation_refs", "A_VFRONT": "validation_front",
    "A_SETUP_OPEN": "setup_open", "A_SETUP_DONE": "setup_done", "SETUP_RESULT": "setup:",
    "SETUP_CLAIM": "setupclaim:", "VAL": "val:", "VAL_CLAIM": "valclaim:", "CLAIM_BY": "by", "CLAIM_AT": "at",
    "REFS_SINGLES": "singles", "REFS_BASE": "base", "REFS_TIMINGS": "timings", "REFS_BASE_TIMINGS": "__base__",
    "UNIT_RAW": "raw", "UNIT_TIMINGS": "timings", "UNIT_ERROR": "error", "VAL_DOCS": "docs",
    "VAL_TIMINGS": "timings", "VAL_SUMMARY": "summary", "VAL_ERROR": "error", "NOISE_TASKS": "tasks",
    "NOISE_OBJECTIVE_SE": "objective_se", "NOISE_RESOLVABLE": "resolvable",
    "T_CANDIDATE": "candidate", "T_KIND": "kind", "T_LABEL": "label", "T_RAW": "raw", "T_NORM": "normalized",
    "T_OBJ": "objective", "T_TIMES": "timings", "T_ERROR": "error", "T_FIDELITY": "fidelity",
    "KIND_BASELINE": "baseline", "KIND_SEARCH": "search", "TIME_TOTAL": "total_s",
    "TIME_REUSED_FROM": "reused_from_trial", "BASE_LABEL": "base", "UNIFORM": "uniform",
    "TASK_ARITHMETIC": "task_arithmetic", "TIES": "ties", "DARE_TIES": "dare_ties",
    "V_PICK": "pick", "V_RECOMMENDED": "recommended", "V_SEARCH_PAID": "search_paid",
    "V_COMPARISONS": "comparisons", "V_DOCUMENTS": "documents", "V_TEXT": "text",
    "ROLE_BEST_SINGLE": "best single model", "ROLE_BEST_MERGE": "best merge baseline",
    "ROLE_BEST_CHECKPOINT": "best single checkpoint", "ROLE_UNIFORM": "uniform average", "ROLE_BASE": "base model",
}


def test_stored_names_keep_their_values():
    assert {name: getattr(K, name) for name in STORED} == STORED


def test_labels_as_stored():
    assert K.checkpoint_label("a") == "checkpoint:a" and K.soup_label("b") == "greedy soup +b"
    assert K.search_label(7) == "trial 7"
    assert K.is_single("checkpoint:a") and K.is_single("base") and not K.is_single("uniform")
    assert K.is_soup("greedy soup +b") and not K.is_soup("uniform")


def test_readers_re_export_the_same_keys():
    assert records.T_CANDIDATE is K.T_CANDIDATE and records.BASE_LABEL is K.BASE_LABEL
    assert validation.A_VREFS is K.A_VREFS and validation.A_VFRONT is K.A_VFRONT
