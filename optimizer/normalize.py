"""Score normalization (Yadav et al. 2024, "What Matters for Model Merging at Scale?"):
held-in tasks are divided by the task's expert (the best single checkpoint on it), held-out
tasks by the base model. For lower-is-better metrics (perplexity) the ratio is inverted, so a
normalized score is always "higher is better" and 1.0 means "as good as the reference".

A task with a ``chance`` level (random guessing: 1/choices for multiple choice) is normalized
chance-corrected, (s - chance) / (reference - chance): 0 is guessing, 1 the reference. A task
whose expert is barely above chance otherwise adds noise near 1.0 to the mean for free (demo_add:
expert 0.385 on 4 choices); corrected, its scale is the reference's margin over guessing. A
reference at or below chance has no margin to divide by: the plain ratio is kept."""

from __future__ import annotations

from optimizer.spec import TaskSpec


def denominators(
    tasks: list[TaskSpec],
    singles: dict[str, dict[str, float]],
    base: dict[str, float] | None,
    directions: dict[str, bool],
) -> dict[str, float | None]:
    """task -> reference raw score (None: the task is left unnormalized)."""
    out: dict[str, float | None] = {}
    for t in tasks:
        how = t.normalization
        if how == "expert":
            values = [s[t.task] for s in singles.values()]
            out[t.task] = max(values) if directions.get(t.task, True) else min(values)
        elif how == "base":
            if base is None:
                raise ValueError(f"task '{t.task}' needs the base model's score")
            out[t.task] = base[t.task]
        else:
            out[t.task] = None
    return out


def normalize(
    raw: dict[str, float], dens: dict[str, float | None], directions: dict[str, bool],
    chance: dict[str, float | None] | None = None,
) -> dict[str, float]:
    out = {}
    for task, value in raw.items():
        ref = dens.get(task)
        c = (chance or {}).get(task)
        if ref is None or ref == 0 or (not directions.get(task, True) and value == 0):
            out[task] = value  # nothing to divide by: documented as left unnormalized
        elif c is not None and directions.get(task, True) and ref > c:
            out[task] = (value - c) / (ref - c)
        elif directions.get(task, True):
            out[task] = value / ref
        else:
            out[task] = ref / value
    return out


def scalarize(normalized: dict[str, float], tasks: list[TaskSpec], objective: str) -> float:
    if objective == "mean":
        return sum(normalized[t.task] for t in tasks) / len(tasks)
    total = sum(t.weight for t in tasks)
    return sum(t.weight * normalized[t.task] for t in tasks) / total
