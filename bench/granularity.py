"""Fused resident merge with per-group weights vs one weight per checkpoint, side by side.

Same pool, same method, alternating in one run: model-level, per layer (layer_groups = L),
per layer x 4 kinds (smooth over depth with attention/mlp/norms/embeddings). Prints the median
and the fastest time per candidate and their ratios to model-level (on a shared machine the
fastest is the steadier number), on a CPU also the ratio of the process's CPU time.

    python bench/granularity.py [--n 4] [--params 40e6] [--dtype bfloat16] [--device auto] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from materialize import build_pool, config_for  # noqa: E402

from contract.merge import MergeSpec  # noqa: E402
from evaluators.merging.resident import ResidentPool, pick_device  # noqa: E402
from evaluators.pool.validation import validate_pool  # noqa: E402


def spec(method: str, names: list[str], granularity: dict | None, groups: int) -> MergeSpec:
    g = torch.Generator().manual_seed(0)
    extra = {"lambda": 0.8} if method == "task_arithmetic" else {}
    if granularity is None:
        return MergeSpec(method=method, weights={n: 0.2 + 0.1 * i for i, n in enumerate(names)}, **extra)
    gw = {n: (0.1 + torch.rand(groups, generator=g, dtype=torch.float64)).tolist() for n in names}
    return MergeSpec(method=method, weights=dict.fromkeys(names, 1.0), granularity=granularity, group_weights=gw,
                     **extra)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--params", type=float, default=40e6)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    device = pick_device(args.device)
    layers = config_for(args.params).num_hidden_layers
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = build_pool(Path(tmp), args.n + 1, args.params, getattr(torch, args.dtype))
        pool = ResidentPool(validate_pool(ckpts[1:], ckpts[0][1]), device)
        names = pool.checkpoint_names
        out = torch.empty(pool.numel, dtype=pool.flat.dtype, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        variants = {
            "model": (None, 1),
            f"per layer ({layers} groups)": ({"layer_groups": layers}, layers),
            "smooth x 4 kinds": ({"smooth": 4, "kinds": ["attention", "mlp", "norms", "embeddings"]}, 16),
        }
        print(f"pool: {args.n} x {pool.numel / 1e6:.1f}M params, {args.dtype}, {layers} layers, {device}")
        for method in ("linear", "task_arithmetic"):
            specs = {k: spec(method, names, g, n) for k, (g, n) in variants.items()}
            for s in specs.values():  # warm-up (task vectors, group layouts)
                pool.merge_flat_into(s, out)
            times: dict[str, list[float]] = {k: [] for k in specs}
            cpu: dict[str, list[float]] = {k: [] for k in specs}
            for _ in range(args.repeats):
                for k, s in specs.items():  # alternating: drift hits every variant alike
                    sync()
                    t0, c0 = time.perf_counter(), time.process_time()
                    pool.merge_flat_into(s, out)
                    sync()
                    times[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
            base, fastest, cpu_base = (statistics.median(times["model"]), min(times["model"]),
                                       statistics.median(cpu["model"]))
            for k, ts in times.items():
                runs = len(pool.groups(specs[k].granularity)[1]) if specs[k].granularity else 1
                print(f"{method:16s} {k:24s} median {statistics.median(ts) * 1e3:8.1f} ms x{statistics.median(ts) / base:.2f}"
                      f"  min {min(ts) * 1e3:8.1f} ms x{min(ts) / fastest:.2f}"
                      + (f"  cpu {statistics.median(cpu[k]) / cpu_base:.2f}" if device.type == "cpu" else "")
                      + f"  ({runs} runs)")


if __name__ == "__main__":
    main()
