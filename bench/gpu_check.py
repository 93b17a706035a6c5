"""Materialization bandwidth for bench/gpu_check.sh: the same pool merged (linear, fused, in
place) with the pool resident on the device and streamed from pinned host memory, each against
its reference copy (a device-to-device copy; a pinned host -> device copy of the pool).

    python bench/gpu_check.py [--n 8] [--params 1e9] [--dtype bfloat16] [--device cuda] [--repeats 5]

Unlike bench/materialize.py this never runs mergekit (minutes per candidate at 8 x 1B), and it
builds the pool once for both placements.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from materialize import build_pool  # noqa: E402
from materialize import time_it as time_calls  # noqa: E402

from contract.merge import MergeSpec  # noqa: E402
from evaluators.merging.resident import ResidentModel, ResidentPool, pick_device  # noqa: E402
from evaluators.merging.streaming import host_buffer  # noqa: E402
from evaluators.options import EvaluatorOptions  # noqa: E402
from evaluators.pool.validation import validate_pool  # noqa: E402


def time_it(fn, repeats: int, sync) -> float:
    """Median seconds of the calls after the first (which builds caches)."""
    return statistics.median(time_calls(fn, repeats, sync)[1])


def reference(n_params: int, n: int, dtype: torch.dtype, device: torch.device, streamed: bool, repeats: int,
              sync) -> tuple[str, float]:
    """(what, bytes/s) of the copy a merge of this placement is bounded by."""
    elem = torch.tensor([], dtype=dtype).element_size()
    if streamed and device.type == "cuda":
        src = host_buffer((n_params * n,), dtype).normal_()
        dst = torch.empty(src.shape, dtype=dtype, device=device)
        t = time_it(lambda: dst.copy_(src, non_blocking=True), repeats, sync)
        return "pinned host -> device copy of the pool", src.numel() * elem / t
    src = torch.empty(n_params * n, dtype=dtype, device=device).normal_()
    dst = torch.empty_like(src)
    t = time_it(lambda: dst.copy_(src), repeats, sync)
    return f"{device.type} copy (read + write)", 2 * src.numel() * elem / t


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--params", type=float, default=1e9)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    dtype, device = getattr(torch, args.dtype), pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    elem = torch.tensor([], dtype=dtype).element_size()
    root = Path(tempfile.mkdtemp(prefix="mergeopt-gpucheck-"))
    rows = []
    try:
        dirs = build_pool(root, args.n + 1, args.params, dtype)  # + 1: the base
        info = validate_pool(dirs[1:], dirs[0][1])
        n, n_params = len(info.names), info.reference.n_params
        spec = MergeSpec(method="linear", weights={name: 1.0 / (i + 2) for i, name in enumerate(info.names)})
        for place in ("device", "host"):
            resident = ResidentModel(ResidentPool(info, device, options=EvaluatorOptions(pool_on=place)))
            streamed = resident.pool.streamed
            t = time_it(lambda r=resident: r.materialize(spec), args.repeats, sync)
            resident = None
            torch.cuda.empty_cache() if device.type == "cuda" else None
            what, peak = reference(n_params, n, dtype, device, streamed, args.repeats, sync)
            # resident: n checkpoints read + the model written; streamed: the pool over the link
            moved = (n * n_params * elem) if streamed else (n + 1) * n_params * elem
            rows.append({"pool": "pinned host, streamed" if streamed else str(device), "ms": t * 1e3,
                         "GB/s": moved / t / 1e9, "reference": what, "ref GB/s": peak / 1e9, "of ref": moved / t / peak})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"pool: {n} x {n_params / 1e6:.1f}M {args.dtype} (+ base), linear merge on {device}, median of {args.repeats}")
    print("| pool on | per candidate | bandwidth | reference | reference bandwidth | of reference |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pool']} | {r['ms']:.1f} ms | {r['GB/s']:.1f} GB/s | {r['reference']} | {r['ref GB/s']:.1f} GB/s "
              f"| {r['of ref']:.0%} |")
    return rows


if __name__ == "__main__":
    main()
