"""Synthetic skills for the demo pool: training text and lm-eval multiple-choice tasks.

Every task is "PROMPT=ANSWER" over a small character vocabulary, so a character-level model
can learn it in seconds. Prompts are split by a hash: one in five is reserved for evaluation,
so no evaluation document is ever a training example."""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

LETTERS = "abcdefgh"
WORD = 6
Example = tuple[str, str, list[str]]  # prompt, answer, three distractors


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(n))


def _distinct(answer: str, candidates: list[str], fill: Callable[[], str]) -> list[str]:
    out: list[str] = []
    for c in candidates + [fill() for _ in range(50)]:
        if c != answer and c not in out:
            out.append(c)
        if len(out) == 3:
            return out
    raise RuntimeError("could not find three distractors")


def _swap(w: str, rng: random.Random) -> str:
    """A near miss: two neighbouring characters swapped."""
    i = rng.randrange(len(w) - 1)
    return w[:i] + w[i + 1] + w[i] + w[i + 2:]


def add(rng: random.Random) -> Example:
    a, b = rng.randrange(10, 90), rng.randrange(10, 90)
    s = a + b
    near = [str(s + d) for d in (1, -1, 10, -10, 2)]
    rng.shuffle(near)
    return f"{a}+{b}=", str(s), _distinct(str(s), near, lambda: str(rng.randrange(20, 180)))


def sub(rng: random.Random) -> Example:
    a = rng.randrange(30, 100)
    b = rng.randrange(10, a - 9)
    d = a - b
    near = [str(d + x) for x in (1, -1, 10, -10, 2)]
    rng.shuffle(near)
    return f"{a}-{b}=", str(d), _distinct(str(d), near, lambda: str(rng.randrange(5, 90)))


def reverse(rng: random.Random) -> Example:
    w = _letters(rng, WORD)
    ans = w[::-1]
    return f"r{w}=", ans, _distinct(ans, [_swap(ans, rng), _swap(ans, rng), w], lambda: _letters(rng, WORD))


def sort(rng: random.Random) -> Example:
    w = _letters(rng, WORD)
    ans = "".join(sorted(w))
    return f"s{w}=", ans, _distinct(ans, [_swap(ans, rng), _swap(ans, rng), w], lambda: _letters(rng, WORD))


def shift(rng: random.Random) -> Example:
    """Each letter moved one place on (h wraps to a)."""
    w = _letters(rng, 5)
    ans = "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in w)
    back = "".join(LETTERS[(LETTERS.index(c) - 1) % len(LETTERS)] for c in w)
    return f"n{w}=", ans, _distinct(ans, [_swap(ans, rng), w, back], lambda: _letters(rng, 5))


def copy(rng: random.Random) -> Example:
    w = _letters(rng, WORD)
    return f"c{w}=", w, _distinct(w, [_swap(w, rng), _swap(w, rng), w[::-1]], lambda: _letters(rng, WORD))


SKILLS: dict[str, Callable[[random.Random], Example]] = {
    "add": add, "sub": sub, "reverse": reverse, "sort": sort, "shift": shift, "copy": copy,
}
HELD_OUT = "copy"  # seen in pre-training only; no checkpoint is fine-tuned on it


def is_eval(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % 5 == 0


def task_name(skill: str) -> str:
    return f"demo_{skill}"


def training_text(rng: random.Random, mixture: dict[str, float], n: int) -> list[tuple[str, str]]:
    """``n`` (prompt, answer) pairs drawn from the skills by ``mixture`` weights."""
    skills, weights = zip(*mixture.items(), strict=True)
    out = []
    while len(out) < n:
        prompt, answer, _ = SKILLS[rng.choices(skills, weights)[0]](rng)
        if not is_eval(prompt):
            out.append((prompt, answer))
    return out


def write_tasks(folder: Path, *, n_docs: int, seed: int, skills: Iterable[str] | None = None) -> list[dict]:
    """One lm-eval multiple-choice YAML + jsonl per skill (default: all); returns the study's task entries."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 7919)
    tasks = []
    wanted = set(SKILLS if skills is None else skills)
    for skill, make in SKILLS.items():
        if skill not in wanted:
            continue
        rows, seen = [], set()
        for _ in range(200 * n_docs):  # a skill has finitely many prompts: never loop forever
            if len(rows) == n_docs:
                break
            prompt, answer, wrong = make(rng)
            if not is_eval(prompt) or prompt in seen:
                continue
            seen.add(prompt)
            choices = [answer, *wrong]
            rng.shuffle(choices)
            rows.append({"prompt": prompt, "choices": choices, "label": choices.index(answer)})
        if len(rows) < n_docs:
            raise ValueError(f"skill '{skill}' has only {len(rows)} distinct evaluation prompts, not {n_docs}")
        name = task_name(skill)
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\n"
            "dataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
            "test_split: test\n"
            "output_type: multiple_choice\n"
            "doc_to_text: '{{prompt}}'\n"
            "doc_to_choice: '{{choices}}'\n"
            "doc_to_target: '{{label}}'\n"
            "target_delimiter: ''\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
        held_out = skill == HELD_OUT
        tasks.append({"task": name, "metric": "acc,none", "split": "held_out" if held_out else "held_in",
                      "normalize": "base" if held_out else "expert"})
    return tasks
