"""Chunked TIES / DARE on the device for bench/gpu_check.sh: each route of
evaluators/merging/bounded.py against the per-tensor formula on one large tensor, with times and
peak device memory. On the CPU the tests check these bit for bit; on CUDA the kernels' reduction
orders may differ, so this reports the largest difference and fails only past bf16 tolerance.
DARE on CUDA draws other (equally seeded) masks in chunks: only the kept share is compared.

    python bench/gpu_bounded.py [--n 8] [--numel 5e7] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.merging import bounded as bm  # noqa: E402
from evaluators.merging import methods as mm  # noqa: E402
from evaluators.merging.resident import pick_device  # noqa: E402


def timed(fn, device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    peak = torch.cuda.max_memory_allocated(device) - base_mem if device.type == "cuda" else float("nan")
    return out, time.perf_counter() - t0, peak


def _gb(n_bytes: float) -> str:
    return "n/a" if n_bytes != n_bytes else f"{n_bytes / 1e9:.2f}"  # NaN: no allocator statistics (CPU)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--numel", type=float, default=5e7)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    device, numel, n = pick_device(args.device), int(args.numel), args.n
    g = torch.Generator(device=device).manual_seed(0)
    base = (torch.randn(numel, generator=g, device=device) * 0.02).to(torch.bfloat16)
    stack = (base.float() + torch.randn((n, numel), generator=g, device=device) * 0.002).to(torch.bfloat16)
    w, density = [1.0 / (i + 2) for i in range(n)], [0.2 + 0.6 * i / max(1, n - 1) for i in range(n)]
    rows, ok = [], True

    def formula_ties(stable: bool):
        d = mm.task_vectors(base, stack)
        orders = torch.stack([torch.argsort(x.abs(), descending=True, stable=True) for x in d]) if stable else None
        return mm.ties(base, d, w, density=density, orders=orders)

    for name, fn, ref_fn in [
        ("ties ranked", lambda: bm.ties(stack, base, w, density=density, lambda_=1.0, normalize=True, ranked=True),
         lambda: formula_ties(False)),
        ("ties radix", lambda: bm.ties(stack, base, w, density=density, lambda_=1.0, normalize=True),
         lambda: formula_ties(True)),
    ]:
        got, t, peak = timed(fn, device)
        want, t_ref, peak_ref = timed(ref_fn, device)
        diff = (got.float() - want.float()).abs().max().item()
        close = torch.allclose(got.float(), want.float(), rtol=1.6e-2, atol=1e-5)
        ok &= close
        rows.append((name, t, peak, t_ref, peak_ref, f"max |diff| {diff:.1e}, equal {torch.equal(got, want)}"))
        del got, want
    for ranked in (True, False):
        gen = torch.Generator(device=device).manual_seed(3)
        got, t, peak = timed(lambda r=ranked, gg=gen: bm.dare_ties(stack, base, w, density=density, lambda_=1.0,
                                                                  normalize=False, generator=gg, ranked=r), device)
        want, t_ref, peak_ref = timed(lambda: mm.dare_ties(base, mm.task_vectors(base, stack), w, density=density,
                                                           generator=torch.Generator(device=device).manual_seed(3)),
                                      device)
        kept, kept_ref = (got != base).float().mean().item(), (want != base).float().mean().item()
        ok &= abs(kept - kept_ref) < 0.01
        rows.append((f"dare_ties {'ranked' if ranked else 'radix'}", t, peak, t_ref, peak_ref,
                     f"entries changed {kept:.4f} vs {kept_ref:.4f}, equal {torch.equal(got, want)}"))
        del got, want
    print(f"{n} x {numel / 1e6:.0f}M bf16 + base on {device}: chunked (bounded_merge) vs per-tensor formula")
    print("| route | chunked s | chunked peak GB | formula s | formula peak GB | agreement |\n|---|---|---|---|---|---|")
    for name, t, peak, t_ref, peak_ref, note in rows:
        print(f"| {name} | {t:.2f} | {_gb(peak)} | {t_ref:.2f} | {_gb(peak_ref)} | {note} |")
    if not ok:
        print("gpu_bounded: a chunked merge disagrees with the formula beyond bf16 tolerance")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
