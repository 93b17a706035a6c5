"""Tiny pools and tasks built by the tests themselves (no hub access)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from evaluators.demo.pool import make_tokenizer as demo_tokenizer

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?>.:,-")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    return demo_tokenizer(CHARS)


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(SPECIALS) + len(CHARS), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def save_model(model: LlamaForCausalLM, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    make_tokenizer().save_pretrained(path)
    return path


def make_pool(root: Path, n: int = 3, *, dtype: torch.dtype = torch.float32, noise: float = 0.05, seed: int = 0) -> dict:
    """A base and ``n`` checkpoints = base + random task vectors (same layout, real HF dirs)."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM(tiny_config())
    save_model(base, root / "base", dtype)
    ckpts = []
    for i in range(n):
        m = LlamaForCausalLM(tiny_config())
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
        ckpts.append((f"ckpt{i}", save_model(m, root / f"ckpt{i}", dtype)))
    return {"base": root / "base", "checkpoints": ckpts}


def make_tasks(root: Path, n_docs: int = 12) -> tuple[Path, list[str]]:
    """Two multiple-choice tasks over local jsonl files."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    names = []
    for name, fn in (("tiny_add", lambda a, b: a + b), ("tiny_sub", lambda a, b: a - b)):
        rows = []
        for i in range(n_docs):
            a, b = (i * 7) % 10, (i * 3) % 10
            ans = fn(a, b)
            choices = [str(ans), str(ans + 1), str(ans - 2), str(ans + 3)]
            rows.append({"q": f"{a}{'+' if name == 'tiny_add' else '-'}{b}=", "choices": choices, "label": i % 4})
            rows[-1]["choices"][0], rows[-1]["choices"][i % 4] = rows[-1]["choices"][i % 4], rows[-1]["choices"][0]
        data = tasks / f"{name}.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
            "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n"
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
        names.append(name)
    return tasks, names


def make_extra_tasks(root: Path, n_docs: int = 8) -> Path:
    """A generate_until task (exact_match) and a loglikelihood_rolling task (perplexity)."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    gen = tasks / "tiny_gen.jsonl"
    gen.write_text("\n".join(json.dumps({"q": f"{i}+{i}=", "a": str(2 * i)}) for i in range(n_docs)) + "\n")
    (tasks / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {gen}\n"
        "test_split: test\nfewshot_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\n"
        "doc_to_target: '{{a}}'\ngeneration_kwargs:\n  until: ['.']\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    ppl = tasks / "tiny_ppl.jsonl"
    ppl.write_text("\n".join(json.dumps({"text": f"abc {i} def {i + 1} ghi"}) for i in range(n_docs)) + "\n")
    (tasks / "tiny_ppl.yaml").write_text(
        f"task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {ppl}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    return tasks


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def spm_model(pieces: list[str]) -> bytes:
    """A minimal sentencepiece ModelProto: each piece with a score (what the pool check reads)."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2]) + _varint(len(payload)) + payload
    return b"".join(field(1, field(1, p.encode()) + b"\x15\x00\x00\x80\xbf") for p in pieces)


TOKENIZER_FORMATS = ("tokenizer.json", "tokenizer.model", "vocab.json+merges.txt", "vocab.txt")


def write_tokenizer(folder: Path, fmt: str, tokens: list[str]) -> None:
    """Replace the folder's tokenizer files by one format holding ``tokens`` (id = position)."""
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    if fmt == "tokenizer.json":
        tj = {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "unk_token": tokens[0],
                                                               "vocab": {t: i for i, t in enumerate(tokens)}}}
        (folder / "tokenizer.json").write_text(json.dumps(tj))
    elif fmt == "tokenizer.model":
        (folder / "tokenizer.model").write_bytes(spm_model(tokens))
    elif fmt == "vocab.json+merges.txt":
        (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (folder / "merges.txt").write_text("#version: 0.2\n")
    else:
        (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
