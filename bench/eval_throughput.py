"""Scoring throughput: mergeopt's scorer (prefix-shared, evaluators/scoring/prefix.py) vs lm-eval's
HFLM as is vs the floor, side by side in one run, on two local task shapes the bench builds:

- hellaswag-shaped: ~150-token contexts, 4 endings of ~20 tokens (acc, acc_norm);
- mmlu-shaped: ~150-token contexts, 4 one-token answers (acc).

The model is a random Llama (character tokenizer; vocabulary, width and depth set below). Each
repeat runs the three in turn (rotating order), after one warm-up each, on the same documents:

- mergeopt: ``SuiteScorer.score`` (lm-eval's evaluate, its tasks, filters and metrics);
- HFLM: lm-eval's ``HFLM`` class as is, through lm-eval's ``evaluate`` on the same task dict;
- floor: one forward over each unique input token (each context once, then every ending's
  tokens once, packed one document per row) with logits only where a token is scored; no
  lm-eval at all. A cost floor, not a scorer.

    python bench/eval_throughput.py [--docs 80] [--repeats 3] [--batch-size 32] [--device cpu]
                                    [--dtype float32] [--hidden 256] [--layers 4] [--vocab 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.adapters import lm_eval as lm_eval_adapter  # noqa: E402
from evaluators.demo.pool import make_tokenizer  # noqa: E402
from evaluators.scoring.suite_scorer import SuiteScorer, TaskRequest  # noqa: E402

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 :.,?")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _text(rng: random.Random, n_chars: int) -> str:
    words = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 8))))
    return " ".join(words)[:n_chars].strip()


def write_tasks(root: Path, docs: int, ctx: int, ending: int, seed: int = 0) -> Path:
    """The two tasks as local jsonl + lm-eval YAML (one character = one token)."""
    rng = random.Random(seed)
    shapes = {
        "hs_shape": ([{"ctx": _text(rng, rng.randint(ctx - 15, ctx + 15)),
                       "endings": [_text(rng, rng.randint(ending - 5, ending + 5)) for _ in range(4)],
                       "label": i % 4} for i in range(docs)], "' '", "  - metric: acc\n  - metric: acc_norm\n"),
        "mmlu_shape": ([{"ctx": _text(rng, rng.randint(ctx - 15, ctx + 15)) + " answer:", "endings": list("abcd"),
                         "label": i % 4} for i in range(docs)], "''", "  - metric: acc\n"),
    }
    for name, (rows, delim, metrics) in shapes.items():
        data = root / f"{name}.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{ctx}}'\n"
            f"doc_to_choice: '{{{{endings}}}}'\ndoc_to_target: '{{{{label}}}}'\ntarget_delimiter: {delim}\n"
            f"metric_list:\n{metrics}")
    return root


def make_model(args) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75),
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), max_position_embeddings=1024,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype)).eval()


def floor_plan(docs: dict) -> list[tuple[list[int], list[int]]]:
    """Per document: (context + every ending but its last token, positions whose logits score)."""
    rows = []
    for ctx, conts in docs.values():
        seq, scored = list(ctx), []
        for cont in conts:
            scored += [len(ctx) - 1] + list(range(len(seq), len(seq) + len(cont) - 1))
            seq += cont[:-1]
        rows.append((seq, scored))
    return sorted(rows, key=lambda r: -len(r[0]))


def run_floor(model, rows, batch_size: int, device: str) -> float:
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(rows), batch_size):
            part = rows[s:s + batch_size]
            ids = torch.zeros((len(part), len(part[0][0])), dtype=torch.long)
            r_idx, p_idx = [], []
            for r, (seq, scored) in enumerate(part):
                ids[r, :len(seq)] = torch.tensor(seq)
                r_idx += [r] * len(scored)
                p_idx += scored
            hidden = model.model(input_ids=ids.to(device)).last_hidden_state
            logits = model.lm_head(hidden[torch.tensor(r_idx, device=device), torch.tensor(p_idx, device=device)])
            total += float(F.log_softmax(logits, dim=-1).max(dim=-1).values.sum())  # host sync, as the scorers
    return total


def timed(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=80)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--ctx", type=int, default=150, help="context length in tokens (about)")
    ap.add_argument("--ending", type=int, default=20, help="ending length in tokens (about)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    model, tok = make_model(args), make_tokenizer(CHARS)
    n_params = sum(p.numel() for p in model.parameters())
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "params": n_params, "shapes": {}}
    print(f"random Llama {n_params / 1e6:.1f}M params ({args.layers} x {args.hidden}, vocab {args.vocab}), "
          f"{args.dtype} on {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.docs} docs per task, {args.repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="mergeopt-evalbench-") as tmp:
        include = write_tasks(Path(tmp), args.docs, args.ctx, args.ending)
        for task in ("hs_shape", "mmlu_shape"):
            ours = SuiteScorer([TaskRequest(task, "acc,none")], include, batch_size=args.batch_size)
            plain = SuiteScorer([TaskRequest(task, "acc,none")], include, batch_size=args.batch_size, prefix_sharing=False)
            hflm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
            acc = {"mergeopt": ours.score(model, tok)[task]}  # warm-up: requests built, pairs tokenized
            res = evaluate(hflm, plain.task_dict, bootstrap_iters=0)
            acc["HFLM"] = res["results"][task]["acc,none"]
            insts = plain.tasks[task].instances
            pairs = [lm_eval_adapter.encode_pair(hflm, *i.args) for i in insts]
            ll_ref = [ll for ll, _ in hflm.loglikelihood(insts, disable_tqdm=True)]
            ll_ours = [ll for ll, _ in ours._lm_for(model, tok).loglikelihood(insts)]
            docs: dict = {}
            for inst, (ctx, cont) in zip(insts, pairs, strict=True):
                docs.setdefault(inst.doc_id, (ctx, []))[1].append(cont)
            rows = floor_plan(docs)
            run_floor(model, rows, args.batch_size, args.device)
            methods = {
                "mergeopt": lambda o=ours: o.score(model, tok),
                "HFLM": lambda h=hflm, d=plain.task_dict: evaluate(h, d, bootstrap_iters=0),
                "floor": lambda r=rows: run_floor(model, r, args.batch_size, args.device),
            }
            times: dict[str, list[float]] = {k: [] for k in methods}
            names = list(methods)
            for r in range(args.repeats):
                for name in names[r % 3:] + names[:r % 3]:
                    times[name].append(timed(methods[name], sync))
            req_tokens = sum(len(c) + len(k) for c, k in pairs)
            unique = sum(len(seq) for seq, _ in rows)
            fig = {
                "requests": len(pairs), "request_tokens": req_tokens, "unique_tokens": unique,
                "seconds": {k: statistics.median(v) for k, v in times.items()},
                "hflm_over_mergeopt": [h / m for h, m in zip(times["HFLM"], times["mergeopt"], strict=True)],
                "mergeopt_over_floor": [m / f for m, f in zip(times["mergeopt"], times["floor"], strict=True)],
                "max_abs_ll_diff": max(abs(a - b) for a, b in zip(ll_ref, ll_ours, strict=True)),
                "acc": acc,
            }
            fig["tokens_per_s"] = {k: req_tokens / s for k, s in fig["seconds"].items()}
            out["shapes"][task] = fig
    print("| shape | requests | request tokens | unique tokens | HFLM s | mergeopt s | floor s "
          "| HFLM / mergeopt | mergeopt / floor | mergeopt tok/s | HFLM tok/s | max abs ll diff | acc equal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for task, f in out["shapes"].items():
        s = f["seconds"]
        print(f"| {task} | {f['requests']} | {f['request_tokens']} | {f['unique_tokens']} | {s['HFLM']:.2f} | "
              f"{s['mergeopt']:.2f} | {s['floor']:.2f} | {spread(f['hflm_over_mergeopt'])} | "
              f"{spread(f['mergeopt_over_floor'])} | {f['tokens_per_s']['mergeopt']:.0f} | "
              f"{f['tokens_per_s']['HFLM']:.0f} | {f['max_abs_ll_diff']:.1e} | {f['acc']['mergeopt'] == f['acc']['HFLM']} |")
    print("(times: median of repeats; ratios: median [min-max] over repeats, each from one repeat's side-by-side runs; "
          "tok/s: request tokens (context + ending, per request) per second)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
