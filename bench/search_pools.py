"""Pools of known character for bench/search.py, trained here from one shared tiny base (the
demo's tokenizer, model shape and training loop; the demo's own recipe is not used, so the
benchmark does not move when the demo changes).

- ``merge_helps``: three single-skill specialists (shift, reverse, sort) from the base; each
  forgets the others' skills, so a merge that combines them should beat every one alone.
- ``single_best``: one checkpoint trained on every skill, one diverged by a far too high
  learning rate, one copy of the strong one with heavy Gaussian noise: the strong checkpoint
  alone should be (close to) the best point of the space.
- ``trajectory``: four snapshots of one continued run on every skill (equal segments, each a
  fresh warm-up/decay of the demo's schedule): merges of nearby snapshots, as in checkpoint
  averaging, may help a little or not at all.
- ``recycle8`` / ``recycle16``: the seed paper's setting, checkpoints from separate runs of one
  base: each run draws its data mixture (Dirichlet over the skills), learning rate (log-uniform)
  and length; one run is over-trained (a far too high rate), one under-trained (a few steps).
- ``weighted_helps``: three specialists of very unequal strength (one trained long at a high
  rate, two briefly): the equal-weight soups let the strong one's large task vector drown the
  others, so a weighted merge may beat every soup and every single model.

These characters were fixed before any search default was tuned on them.

Built into a folder once; ``pools.json`` (written last) records what was built and with which
settings, so a changed setting rebuilds and an unchanged one is reused."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaForCausalLM

from evaluators.demo.pool import make_tokenizer, model_config, train
from evaluators.demo.tasks import write_tasks

FORMAT = 4
POOLS = ("merge_helps", "single_best", "trajectory", "recycle8", "recycle16", "weighted_helps")
# Tasks every pool is scored on: three held-in skills and the held-out one. Addition is left out:
# these tiny models stay near chance on it, and a near-chance expert makes normalized scores noise.
TASKS = ("demo_shift", "demo_reverse", "demo_sort", "demo_copy")
ALL_SKILLS = {"add": 1.0, "reverse": 1.0, "sort": 1.0, "shift": 1.0}
# A short pre-training: a base that already knows the skills leaves its specialists nothing to add.
PRETRAIN = (dict.fromkeys(["add", "reverse", "sort", "shift", "copy"], 1.0), 80, 3e-3)
CHARACTER = {
    "merge_helps": "specialists from one base whose skills combine",
    "single_best": "one strong checkpoint, one diverged, one noised copy of the strong one",
    "trajectory": "4 snapshots of one continued run",
    "recycle8": "8 checkpoints from separate runs of one base (random mixtures, rates, lengths)",
    "recycle16": "16 checkpoints from separate runs of one base (random mixtures, rates, lengths)",
    "weighted_helps": "3 specialists of very unequal strength",
}
TRAIN_SKILLS = ("add", "reverse", "sort", "shift")  # copy stays held out (pre-training only)


def recycle_recipes(n: int, seed: int) -> list[tuple[str, dict, int, float]]:
    """(name, mixture, steps, lr) of ``n`` separate runs; run 0 over-trained, run 1 under-trained."""
    rng = np.random.default_rng(seed + 4242 + n)
    out = []
    for i in range(n):
        mix = dict(zip(TRAIN_SKILLS, map(float, rng.dirichlet([0.5] * len(TRAIN_SKILLS))), strict=True))
        steps, lr = int(rng.integers(40, 300)), float(10 ** rng.uniform(np.log10(5e-4), np.log10(5e-3)))
        if i == 0:
            steps, lr = 300, 2e-2
        elif i == 1:
            steps = 12
        out.append((f"run{i:02d}", mix, steps, lr))
    return out


@dataclass(frozen=True)
class BenchPool:
    name: str
    base: Path
    checkpoints: list[tuple[str, Path]]
    include_path: Path
    tasks: list[dict]

    @property
    def character(self) -> str:
        return CHARACTER[self.name]


def _save(model: LlamaForCausalLM, tok, path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _from(state: dict) -> LlamaForCausalLM:
    model = LlamaForCausalLM(model_config())
    model.load_state_dict(state)
    return model


def _state(model: LlamaForCausalLM) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _build(name: str, base: dict, tok, root: Path, scale, seed: int, progress: bool) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []

    def fit(state: dict, mixture: dict, steps: int, lr: float, salt: int, label: str) -> LlamaForCausalLM:
        model = _from(state)
        train(model, tok, mixture=mixture, steps=scale(steps), lr=lr, seed=seed + salt, desc=f"{name}/{label}",
              progress=progress)
        return model

    if name == "merge_helps":
        for i, skill in enumerate(("shift", "reverse", "sort")):
            out.append((skill, _save(fit(base, {skill: 1.0}, 150, 2e-3, 11 * (i + 1), skill), tok, root / skill)))
    elif name == "single_best":
        strong = fit(base, ALL_SKILLS, 300, 2e-3, 101, "strong")
        out.append(("strong", _save(strong, tok, root / "strong")))
        out.append(("diverged", _save(fit(base, ALL_SKILLS, 60, 5e-2, 102, "diverged"), tok, root / "diverged")))
        # Noise of 0.6x each tensor's own spread: clearly damaged, still the strong one's basin.
        g = torch.Generator().manual_seed(seed + 103)
        noised = {k: v + 0.6 * v.float().std().nan_to_num() * torch.randn(v.shape, generator=g) if v.numel() > 1 else v
                  for k, v in _state(strong).items()}
        out.append(("noised", _save(_from(noised), tok, root / "noised")))
    elif name == "trajectory":
        state = base
        for i in range(4):
            model = fit(state, ALL_SKILLS, 60, 3e-3, 201 + i, f"snapshot{i + 1}")
            out.append((f"step{60 * (i + 1)}", _save(model, tok, root / f"step{60 * (i + 1)}")))
            state = _state(model)
    elif name in ("recycle8", "recycle16"):
        for i, (label, mix, steps, lr) in enumerate(recycle_recipes(int(name.removeprefix("recycle")), seed)):
            out.append((label, _save(fit(base, mix, steps, lr, 301 + i, label), tok, root / label)))
    elif name == "weighted_helps":
        recipes = [("shift_strong", "shift", 400, 5e-3), ("reverse_weak", "reverse", 60, 1e-3),
                   ("sort_weak", "sort", 60, 1e-3)]
        for i, (label, skill, steps, lr) in enumerate(recipes):
            out.append((label, _save(fit(base, {skill: 1.0}, steps, lr, 401 + i, label), tok, root / label)))
    else:
        raise ValueError(f"unknown pool '{name}' (pools: {', '.join(POOLS)})")
    return out


def build_pools(root: Path, names: list[str], *, n_docs: int, steps_scale: float = 1.0, seed: int = 0,
                progress: bool = False) -> dict[str, BenchPool]:
    """The named pools under ``root`` (reused when built with the same settings)."""
    root = Path(root).resolve()
    settings = {"format": FORMAT, "n_docs": n_docs, "steps_scale": steps_scale, "seed": seed}
    manifest = root / "pools.json"
    built = json.loads(manifest.read_text()) if manifest.exists() else {}
    if built.get("settings") != settings:
        built = {"settings": settings, "pools": {}}
    tok = make_tokenizer()
    scale = lambda steps: max(1, int(steps * steps_scale))  # noqa: E731
    threads = torch.get_num_threads()
    # One thread: on a machine whose cores are shared, a second torch thread spin-waits on the
    # first and a step takes ~20x longer (measured: 1.5 s vs 0.07 s on 2 busy cores).
    torch.set_num_threads(1)
    try:
        if not (root / "base" / "model.safetensors").exists() or not built["pools"]:
            manifest.unlink(missing_ok=True)
            torch.manual_seed(seed)
            base_model = LlamaForCausalLM(model_config())
            mixture, steps, lr = PRETRAIN
            train(base_model, tok, mixture=mixture, steps=scale(steps), lr=lr, seed=seed, desc="base",
                  progress=progress)
            _save(base_model, tok, root / "base")
            built["pools"] = {}
        base = None
        for name in names:
            if name in built["pools"]:
                continue
            if base is None:
                base = _state(LlamaForCausalLM.from_pretrained(root / "base"))
            torch.manual_seed(seed + 1000 + POOLS.index(name))
            ckpts = _build(name, base, tok, root / name, scale, seed, progress)
            built["pools"][name] = [[n, str(p)] for n, p in ckpts]
            tmp = root / "pools.json.tmp"
            tmp.write_text(json.dumps(built, indent=2))
            tmp.replace(manifest)
    finally:
        torch.set_num_threads(threads)
    skills = [t.removeprefix("demo_") for t in TASKS]
    tasks = write_tasks(root / "tasks", n_docs=n_docs, seed=seed, skills=skills)
    return {name: BenchPool(name, root / "base", [(n, Path(p)) for n, p in built["pools"][name]], root / "tasks", tasks)
            for name in names}
