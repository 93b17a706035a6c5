"""Per-trial evaluation time vs a bare batched forward over the same tokens, in one run.

The bare forward is the floor: every (context, continuation) pair lm-eval scores, tokenized the
same way, sorted by length, padded into batches of the study's batch size, one no-grad forward
each. The study's scoring adds lm-eval's request handling, log-softmax gathering and metrics.

    python bench/eval_overhead.py [--workdir mergeopt-demo] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contract.merge import MergeSpec  # noqa: E402
from evaluators.adapters import lm_eval as lm_eval_adapter  # noqa: E402
from evaluators.demo.pool import build_demo_pool  # noqa: E402
from evaluators.engine import MergeEvaluator  # noqa: E402
from evaluators.scoring.suite_scorer import TaskRequest  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="mergeopt-demo")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    pool = build_demo_pool(Path(args.workdir) / "pool", progress=False)
    ev = MergeEvaluator(pool.checkpoints, pool.base, [TaskRequest(t["task"]) for t in pool.tasks],
                        pool.include_path, batch_size=args.batch_size, device="cpu")
    spec = MergeSpec(weights={n: 1.0 for n, _ in pool.checkpoints})
    ev.evaluate(spec)  # builds requests, tokenizes pairs, warms up
    model, lm = ev.model.model, ev.scorer._lm
    seqs = sorted(((c + k)[-lm.max_length:] for c, k in lm_eval_adapter.encoded_pairs(lm).values()), key=len, reverse=True)
    pad = ev.tokenizer.pad_token_id or 0

    @torch.no_grad()
    def bare() -> None:
        for i in range(0, len(seqs), args.batch_size):
            chunk = seqs[i:i + args.batch_size]
            width = len(chunk[0])
            ids = torch.full((len(chunk), width), pad)
            for j, s in enumerate(chunk):
                ids[j, : len(s)] = torch.tensor(s)
            model(input_ids=ids).logits.log_softmax(-1)

    def study() -> None:
        ev.scorer.score(model, ev.tokenizer)

    def median(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    t_bare, t_study = median(bare), median(study)
    print(f"demo suite: {len(seqs)} scored sequences, batch size {args.batch_size}, CPU")
    print("| what | per trial | ratio |\n|---|---|---|")
    print(f"| bare batched forward (floor) | {t_bare * 1e3:.0f} ms | 1.00x |")
    print(f"| mergeopt scoring (lm-eval, requests/tokens reused) | {t_study * 1e3:.0f} ms | {t_study / t_bare:.2f}x |")


if __name__ == "__main__":
    main()
