"""The Evaluator protocol (contract/evaluator.py) declares everything the study runner uses, and
the runner probes for nothing: no hasattr/getattr on an evaluator in optimizer/."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from contract.evaluator import Evaluator

from fakes import NoisyPool, QuadraticPool

OPTIMIZER = Path(__file__).resolve().parents[1] / "optimizer"
MEMBERS = {"checkpoint_names", "has_base", "directions", "last_timings", "last_documents", "evaluate", "validate", "doc_counts"}


def test_the_protocol_declares_what_the_loop_uses():
    declared = {n for n in vars(Evaluator) if not n.startswith("_")} | set(Evaluator.__annotations__)
    assert MEMBERS <= declared
    assert "fidelity" in inspect.signature(Evaluator.evaluate).parameters


def test_the_fakes_implement_it():
    fakes = [QuadraticPool(["a", "b"], {"x": [1, 0]}), NoisyPool(["a", "b"], lambda p: {"x": float(p[0])})]
    for fake in fakes:
        assert isinstance(fake, Evaluator), type(fake).__name__
        assert isinstance(fake.last_timings, dict) and isinstance(fake.last_documents, dict) and isinstance(fake.doc_counts("search"), dict)


def test_the_engine_implements_it():
    source = (OPTIMIZER.parent / "evaluators" / "engine.py").read_text()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "MergeEvaluator")
    defined = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assigned = {t.attr for n in ast.walk(cls) for t in getattr(n, "targets", [getattr(n, "target", None)])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    assert MEMBERS <= defined | assigned


def test_the_optimizer_probes_no_evaluator():
    probes = []
    for path in sorted(OPTIMIZER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                    and node.args and "evaluator" in ast.unparse(node.args[0])):
                probes.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert probes == []
