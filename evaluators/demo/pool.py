"""The demo pool: a tiny Llama pre-trained on a mix of synthetic skills, then fine-tuned from
that base into specialists, each on one skill's data (like the seed paper's checkpoints from
different training runs), plus matching local lm-eval tasks.

Chosen by re-scoring candidates on 300 fresh documents per task: each specialist gains its own
skill and loses others (the best single checkpoint, 0.82 mean normalized, is below the base,
0.88), so no checkpoint alone is worth shipping; a weighted merge of them keeps most of each gain
(a random search over weights found 0.89, uniform 0.84). Whether the study's merge beats the base
by more than noise is what the demo's verdict says, on validation documents.

Built once into a folder (pool.json is written last, so a half-built pool is rebuilt) and reused."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from evaluators.demo.tasks import SKILLS, training_text, write_tasks

FORMAT_VERSION = 4
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789+=-")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PRETRAIN = {"mixture": dict.fromkeys(SKILLS, 1.0), "steps": 400, "lr": 3e-3}
# name -> (mixture, steps, lr): each a specialist in one held-in skill.
RECIPES: dict[str, tuple[dict[str, float], int, float]] = {
    "adder": ({"add": 0.9, "sub": 0.1}, 250, 2e-3),
    "subtracter": ({"sub": 0.9, "add": 0.1}, 250, 2e-3),
    "strings": ({"reverse": 0.9, "sort": 0.1}, 250, 2e-3),
    "shifter": ({"shift": 0.9, "reverse": 0.1}, 250, 2e-3),
}


@dataclass(frozen=True)
class DemoPool:
    root: Path
    base: Path
    checkpoints: list[tuple[str, Path]]
    include_path: Path
    tasks: list[dict]


def make_tokenizer(chars: list[str] = CHARS) -> PreTrainedTokenizerFast:
    """Character level: lm-eval encodes context and continuation separately; per-character
    tokens make their concatenation exact."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def model_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(SPECIALS) + len(CHARS), hidden_size=96, intermediate_size=256,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _batch(tok: PreTrainedTokenizerFast, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels: the loss is on the answer (and end of text) only."""
    seqs, labels = [], []
    for prompt, answer in pairs:
        p = tok.encode(prompt, add_special_tokens=False)
        a = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    lab = torch.full((len(seqs), width), -100)
    for i, (s, lb) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, lab


def train(model: LlamaForCausalLM, tok, *, mixture: dict[str, float], steps: int, lr: float,
          seed: int, desc: str, progress: bool, batch: int = 64) -> None:
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        ids, lab = _batch(tok, training_text(rng, mixture, batch))
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def _save(model: LlamaForCausalLM, tok, path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _load_manifest(root: Path, seed: int) -> DemoPool | None:
    manifest = root / "pool.json"
    if not manifest.exists():
        return None
    data = json.loads(manifest.read_text())
    if data.get("version") != FORMAT_VERSION or data.get("seed") != seed:
        return None
    pool = DemoPool(root=root, base=root / data["base"], include_path=root / data["include_path"], tasks=data["tasks"],
                    checkpoints=[(n, root / p) for n, p in data["checkpoints"]])
    if not all((p / "model.safetensors").exists() for _, p in [("base", pool.base), *pool.checkpoints]):
        return None
    return pool


def build_demo_pool(root: Path, *, seed: int = 0, progress: bool = True, force: bool = False,
                    steps_scale: float = 1.0, n_docs: int = 300) -> DemoPool:
    """Build (or reuse, if ``root/pool.json`` matches seed and format) the demo pool."""
    root = Path(root)
    if not force and (pool := _load_manifest(root, seed)) is not None:
        return pool
    root.mkdir(parents=True, exist_ok=True)
    (root / "pool.json").unlink(missing_ok=True)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        tok = make_tokenizer()
        base = LlamaForCausalLM(model_config())
        scale = lambda steps: max(1, int(steps * steps_scale))  # noqa: E731
        train(base, tok, mixture=PRETRAIN["mixture"], steps=scale(PRETRAIN["steps"]), lr=PRETRAIN["lr"],
              seed=seed, desc="pre-training base", progress=progress)
        base_dir = _save(base, tok, root / "base")
        base_state = {k: v.clone() for k, v in base.state_dict().items()}
        checkpoints = []
        for i, (name, (mixture, steps, lr)) in enumerate(
            tqdm(RECIPES.items(), desc="fine-tuning checkpoints", disable=not progress)
        ):
            model = LlamaForCausalLM(model_config())
            model.load_state_dict(base_state)
            train(model, tok, mixture=mixture, steps=scale(steps), lr=lr, seed=seed + 101 * (i + 1),
                  desc=name, progress=progress)
            checkpoints.append((name, _save(model, tok, root / name)))
        tasks = write_tasks(root / "tasks", n_docs=n_docs, seed=seed)
    finally:
        torch.set_num_threads(threads)
    manifest = {
        "version": FORMAT_VERSION, "seed": seed, "base": "base", "include_path": "tasks", "tasks": tasks,
        "checkpoints": [[n, p.name] for n, p in checkpoints],
    }
    tmp = root / "pool.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(root / "pool.json")
    return DemoPool(root=root, base=base_dir, checkpoints=checkpoints, include_path=root / "tasks", tasks=tasks)
