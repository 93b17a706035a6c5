"""Per-candidate materialization: mergeopt's resident in-place merge vs what a disk-based loop
pays per candidate (`mergekit-yaml` on the same pool and weights, then loading the result into
transformers). Measured side by side in one run; on a GPU also the achieved bandwidth as a
fraction of a measured device-to-device copy.

    python bench/materialize.py [--n 4] [--params 40e6] [--dtype bfloat16] [--device auto] [--repeats 5]
                                [--pool-on auto|host|device]

--pool-on host keeps the pool in pinned host memory and streams it (what a pool too big for the
GPU gets); on a GPU the reference is then a pinned host -> device copy of the pool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.merge_spec import MergeSpec  # noqa: E402
from evaluators.pool import validate_pool  # noqa: E402
from evaluators.resident import ResidentModel, ResidentPool, pick_device  # noqa: E402
from evaluators.streaming import host_buffer  # noqa: E402


def config_for(params: float) -> LlamaConfig:
    """A Llama whose parameter count is close to ``params`` (hidden 512 per 40M, scaled)."""
    hidden = 512 if params < 2e8 else 2048
    layers = max(2, round((params - 2 * 8000 * hidden) / (12.4 * hidden * hidden)))
    return LlamaConfig(vocab_size=8000, hidden_size=hidden, intermediate_size=int(hidden * 2.7),
                       num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                       max_position_embeddings=256, tie_word_embeddings=False)


def build_pool(root: Path, n: int, params: float, dtype: torch.dtype) -> list[tuple[str, Path]]:
    cfg = config_for(params)
    torch.manual_seed(0)
    out = []
    for i in range(n):
        m = LlamaForCausalLM(cfg).to(dtype)
        path = root / f"m{i}"
        m.save_pretrained(path, safe_serialization=True)
        out.append((f"m{i}", path))
        del m
    return out


def time_it(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mergekit_once(pool, weights, root: Path, dtype: str) -> float:
    cfg = root / "mk.yml"
    models = "\n".join(f"  - model: {p}\n    parameters: {{weight: {w}}}" for (_, p), w in zip(pool, weights, strict=True))
    cfg.write_text(f"merge_method: linear\nmodels:\n{models}\ndtype: float32\nout_dtype: {dtype}\n")
    out = root / "mk_out"
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / "mergekit-yaml"
    t0 = time.perf_counter()
    subprocess.run([str(exe), str(cfg), str(out), "--quiet"], check=True, capture_output=True)
    AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--params", type=float, default=40e6)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mergekit-repeats", type=int, default=2)
    ap.add_argument("--pool-on", choices=["auto", "host", "device"], default="auto")
    args = ap.parse_args()
    os.environ["MERGEOPT_POOL_ON"] = args.pool_on
    dtype = getattr(torch, args.dtype)
    device = pick_device(args.device)
    root = Path(tempfile.mkdtemp(prefix="mergeopt-mat-"))
    try:
        pool_dirs = build_pool(root, args.n, args.params, dtype)
        base = root / "m0"  # the first checkpoint doubles as the base for task-vector methods
        info = validate_pool(pool_dirs[1:], base)
        resident = ResidentModel(ResidentPool(info, device))
        n_params = info.reference.n_params
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        n = len(info.names)
        weights = [1.0 / (i + 2) for i in range(n)]
        named = dict(zip(info.names, weights, strict=True))
        elem = torch.tensor([], dtype=dtype).element_size()
        streamed = resident.pool.streamed
        if streamed and device.type == "cuda":  # the floor is the PCIe link: one pinned H2D copy
            src = host_buffer((n_params * n,), dtype).normal_()
            dst = torch.empty(src.shape, dtype=dtype, device=device)
            copy = time_it(lambda: dst.copy_(src, non_blocking=True), args.repeats, sync)
            peak, floor = src.numel() * elem / copy, "pinned host -> device copy"
        else:
            src = torch.empty(n_params * n, dtype=dtype, device=device).normal_()
            dst = torch.empty_like(src)
            copy = time_it(lambda: dst.copy_(src), args.repeats, sync)
            peak, floor = 2 * src.numel() * elem / copy, "copy"
        src = dst = None
        if not streamed:
            where = str(device)
        else:
            where = "pinned host memory, streamed" if device.type == "cuda" else "host memory, streamed"
        print(f"pool: {n} x {n_params / 1e6:.1f}M {args.dtype} in {where}, merged on {device} (+ base); "
              f"{floor} bandwidth {peak / 1e9:.1f} GB/s")
        rows = []
        for label, spec, moved in (
            ("linear (fused, in place)", MergeSpec(method="linear", weights=named), (n + 1) * n_params * elem),
            ("task_arithmetic (fused, fp32 task vectors)", MergeSpec(method="task_arithmetic", weights=named, lambda_=0.5),
             n * n_params * 4 + 2 * n_params * elem),
            ("ties (per tensor: top-k + sign consensus)", MergeSpec(method="ties", weights=named, density=0.2), None),
        ):
            rows.append((label, time_it(lambda s=spec: resident.materialize(s), args.repeats, sync), moved))
        ours = rows[0][1]
        if shutil.which(str(Path(sys.executable).parent / "mergekit-yaml")):
            mk = statistics.median(mergekit_once(pool_dirs[1:], weights, root, args.dtype) for _ in range(args.mergekit_repeats))
            rows.append(("mergekit-yaml + from_pretrained (linear)", mk, None))
        print("| what | per candidate | vs mergeopt linear | bandwidth | of copy |\n|---|---|---|---|---|")
        for what, t, moved in rows:
            bw = f"{moved / t / 1e9:.1f} GB/s | {moved / t / peak:.0%}" if moved else "- | -"
            print(f"| {what} | {t * 1e3:.1f} ms | {t / ours:.1f}x | {bw} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
