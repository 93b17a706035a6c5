"""Does chance-corrected normalization rank candidates better? (issue 18, deliverable 5)

Reads the studies bench/search.py left in its workdir (no model is evaluated again). For every
study, over its trials scored on validation documents, each normalization (plain: s / ref;
chance-corrected: (s - chance) / (ref - chance), chance 1/4 for the 4-choice synthetic tasks)
gives each trial a search-documents objective and a validation objective. A normalization ranks
candidates better when the search objective's order agrees more with the validation one
(Spearman's rho over the validated trials) and when the trial it picks on search documents is
closer to the best on validation documents (regret, in that normalization's own units, so it is
also reported relative to the spread of the validated trials' validation scores).

    python bench/normalization.py [--workdir /tmp/mergeopt-search-bench] [--chance 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from optimizer import records as R  # noqa: E402
from optimizer import validation as V  # noqa: E402
from optimizer.normalize import denominators, normalize  # noqa: E402
from optimizer.spec import parse_spec  # noqa: E402


def _ranks(x: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)


def spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


def study_scores(study: optuna.Study, chance: float | None) -> list[tuple[float, float]]:
    """(search objective, validation objective) of each validated trial, under one normalization."""
    attrs = study.user_attrs
    spec = parse_spec(attrs[R.A_SPEC])
    if chance is not None:
        tasks = [t.model_copy(update={"chance": chance}) for t in spec.suite.tasks]
        spec = spec.model_copy(update={"suite": spec.suite.model_copy(update={"tasks": tasks})})
    boot = V.bootstrap(spec, attrs)
    if boot is None:
        return []
    refs, dirs = attrs[R.A_REFS], attrs.get(R.A_DIRECTIONS) or {}
    dens = denominators(spec.suite.tasks, refs["singles"], refs["base"], dirs)
    levels = {t.task: t.chance for t in spec.suite.tasks}
    entries = V.stored(attrs)
    out = []
    for row in R.trial_rows(study):
        if row.state != "COMPLETE" or "docs" not in entries.get(row.number, {}):
            continue
        norm = normalize(row.raw, dens, dirs, levels)
        search = statistics.fmean(norm[t] for t in spec.task_names)
        out.append((search, boot.summary(V.load_docs(entries[row.number]))["objective"]["value"]))
    return out


def measure(db: Path, chance: float) -> dict | None:
    storage = f"sqlite:///{db}"
    names = optuna.get_all_study_names(storage)
    if not names:
        return None
    study = optuna.load_study(study_name=names[0], storage=storage)
    out = {"study": names[0]}
    for label, level in (("plain", None), ("chance", chance)):
        pairs = study_scores(study, level)
        if len(pairs) < 3:
            return None
        search, valid = zip(*pairs, strict=True)
        picked = valid[int(np.argmax(search))]
        spread = float(np.std(valid)) or float("nan")
        out[label] = {"rho": spearman(list(search), list(valid)), "regret": max(valid) - picked,
                      "regret_sd": (max(valid) - picked) / spread, "n": len(pairs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mergeopt-search-bench"))
    ap.add_argument("--chance", type=float, default=0.25)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [m for db in sorted(args.workdir.glob("*.db")) if (m := measure(db, args.chance))]
    print("| study | validated trials | rho plain | rho chance | regret/sd plain | regret/sd chance |")
    print("|---|---|---|---|---|---|")
    for m in rows:
        p, c = m["plain"], m["chance"]
        print(f"| {m['study']} | {p['n']} | {p['rho']:.3f} | {c['rho']:.3f} | {p['regret_sd']:.2f} | {c['regret_sd']:.2f} |")
    by_pool: dict[str, list[dict]] = {}
    for m in rows:
        by_pool.setdefault(m["study"].split("-")[0], []).append(m)
    print()
    for pool, ms in by_pool.items():
        d = [m["chance"]["rho"] - m["plain"]["rho"] for m in ms if np.isfinite(m["chance"]["rho"] - m["plain"]["rho"])]
        better = sum(x > 0 for x in d)
        print(f"{pool}: rho chance - plain, mean {statistics.fmean(d) if d else float('nan'):+.3f} over {len(d)} "
              f"studies ({better} higher, {len(d) - better} not)")


if __name__ == "__main__":
    main()
