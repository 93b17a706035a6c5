"""Per-candidate materialization: mergeopt's resident in-place merge vs what a disk-based loop
pays per candidate (`mergekit-yaml` on the same pool and weights, then loading the result into
transformers). Measured side by side in one run; on a GPU also the achieved bandwidth as a
fraction of a measured device-to-device copy.

    python bench/materialize.py [--n 4] [--params 40e6] [--dtype bfloat16] [--device auto] [--repeats 5]
                                [--pool-on auto|host|device] [--compare OLD_CHECKOUT --rounds 3]

--pool-on host keeps the pool in pinned host memory and streams it (what a pool too big for the
GPU gets); on a GPU the reference is then a pinned host -> device copy of the pool.

--compare DIR: the same pool measured with another checkout's evaluators (e.g. `git worktree add
/tmp/old 9449bb0`) and with this one, in alternating fresh processes, --rounds times each; the
table gives each side's median over every candidate timed and the spread (min-max).
"""

from __future__ import annotations

import argparse
import json
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
METHODS = {  # label -> spec fields (weights added per pool)
    "linear": {"method": "linear"},
    "task_arithmetic": {"method": "task_arithmetic", "lambda": 0.5},
    "ties": {"method": "ties", "density": 0.2},
    "dare_ties": {"method": "dare_ties", "density": 0.5},
}


def config_for(params: float) -> LlamaConfig:
    """A Llama whose parameter count is close to ``params`` (hidden 512 per 40M, scaled)."""
    hidden = 512 if params < 2e8 else 2048
    layers = max(2, round((params - 2 * 8000 * hidden) / (12.4 * hidden * hidden)))
    return LlamaConfig(vocab_size=8000, hidden_size=hidden, intermediate_size=int(hidden * 2.7),
                       num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=8,
                       max_position_embeddings=256, tie_word_embeddings=False)


def build_pool(root: Path, n: int, params: float, dtype: torch.dtype) -> list[tuple[str, Path]]:
    """Built once per root (reused when its files are there)."""
    cfg = config_for(params)
    torch.manual_seed(0)
    out = []
    for i in range(n):
        m = LlamaForCausalLM(cfg).to(dtype)
        path = root / f"m{i}"
        if not (path / "config.json").exists():
            m.save_pretrained(path, safe_serialization=True)
        out.append((f"m{i}", path))
        del m
    return out


def time_it(fn, repeats: int, sync) -> tuple[float, list[float]]:
    """(the first call: caches built there, the candidate times after it)."""
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return first, times


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


def measure(args) -> dict:
    """One process: the pool in ``args.pool_dir`` (built if missing) merged by the evaluators of
    ``args.code`` (default: this checkout)."""
    sys.path.insert(0, str(args.code or ROOT))
    from contract.merge import MergeSpec
    from evaluators.merging.resident import ResidentModel, ResidentPool, pick_device
    from evaluators.merging.streaming import host_buffer
    from evaluators.pool.validation import validate_pool

    try:
        from evaluators.options import EvaluatorOptions

        placed = {"options": EvaluatorOptions(pool_on=args.pool_on)}
    except ImportError:  # a checkout from before evaluators/options.py read the variable itself
        os.environ["MERGEOPT_POOL_ON"] = args.pool_on
        placed = {}
    dtype = getattr(torch, args.dtype)
    device = pick_device(args.device)
    pool_dirs = build_pool(args.pool_dir, args.n, args.params, dtype)
    base = args.pool_dir / "m0"  # the first checkpoint doubles as the base for task-vector methods
    info = validate_pool(pool_dirs[1:], base)
    resident = ResidentModel(ResidentPool(info, device, **placed))
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
        copy = statistics.median(time_it(lambda: dst.copy_(src, non_blocking=True), args.repeats, sync)[1])
        peak, floor = src.numel() * elem / copy, "pinned host -> device copy"
    else:
        src = torch.empty(n_params * n, dtype=dtype, device=device).normal_()
        dst = torch.empty_like(src)
        copy = statistics.median(time_it(lambda: dst.copy_(src), args.repeats, sync)[1])
        peak, floor = 2 * src.numel() * elem / copy, "copy"
    copy_once = (lambda: dst.copy_(src, non_blocking=True)) if streamed and device.type == "cuda" else \
        (lambda: dst.copy_(src))
    where = str(device) if not streamed else "pinned host memory, streamed" if device.type == "cuda" \
        else "host memory, streamed"
    # Bytes a merge must move at least: the pool rows it reads (+ the base) and the output written.
    moved = {"linear": (n + 1) * n_params * elem, "task_arithmetic": (n + 2) * n_params * elem}
    rows = {}
    for label, fields in ((k, v) for k, v in METHODS.items() if k in args.methods):
        spec = MergeSpec.model_validate({**fields, "weights": named})
        first, times = time_it(lambda s=spec: resident.materialize(s), args.repeats, sync)
        rows[label] = {"first": first, "times": times, "moved": moved.get(label)}
    # Linear's share of the copy bandwidth from back-to-back pairs (copy, merge): on a shared
    # machine the load changes between two separate medians, much less within a pair.
    linear = MergeSpec.model_validate({**METHODS["linear"], "weights": named})
    shares = []
    for _ in range(args.repeats if "linear" in args.methods else 0):
        c = time_it(copy_once, 0, sync)[0]
        t = time_it(lambda: resident.materialize(linear), 0, sync)[0]
        shares.append((moved["linear"] / t) / (peak * copy / c))
    src = dst = None
    return {"shares": shares, "header": f"pool: {n} x {n_params / 1e6:.1f}M {args.dtype} in {where}, merged on {device} (+ base); "
                      f"{floor} bandwidth {peak / 1e9:.1f} GB/s", "peak": peak, "rows": rows}


def print_one(result: dict, mergekit: float | None) -> None:
    print(result["header"])
    print("| what | first candidate | per candidate (median) | vs linear | bandwidth | of copy |\n|---|---|---|---|---|---|")
    ours = statistics.median(result["rows"]["linear"]["times"])
    for what, r in result["rows"].items():
        t = statistics.median(r["times"])
        bw = f"{r['moved'] / t / 1e9:.1f} GB/s | {r['moved'] / t / result['peak']:.0%}" if r["moved"] else "- | -"
        print(f"| {what} | {r['first'] * 1e3:.1f} ms | {t * 1e3:.1f} ms | {t / ours:.1f}x | {bw} |")
    if result.get("shares"):
        shares = sorted(result["shares"])
        print(f"linear: {statistics.median(shares):.0%} of copy bandwidth (median of {len(shares)} back-to-back "
              f"(copy, merge) pairs, range {shares[0]:.0%}-{shares[-1]:.0%})")
    if mergekit is not None:
        print(f"| mergekit-yaml + from_pretrained (linear) | - | {mergekit * 1e3:.1f} ms | {mergekit / ours:.1f}x | - | - |")


def compare(args, passthrough: list[str]) -> None:
    """Alternate fresh processes of the old checkout and this one on one pool."""
    sides = {"before": args.compare, "now": None}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for side in (sides if r % 2 == 0 else reversed(list(sides))):
            out = args.pool_dir / f"{side}-{r}.json"
            code = ["--code", str(sides[side])] if sides[side] else []
            subprocess.run([sys.executable, __file__, *passthrough, "--pool-dir", str(args.pool_dir),
                            "--json-out", str(out), *code], check=True)
            runs[side].append(json.loads(out.read_text()))
    print(runs["now"][0]["header"].split(";")[0] + f"; {args.rounds} processes per side x {args.repeats} candidates")
    print("| method | before: median (min-max) | now: median (min-max) | now / before | now, first candidate |")
    print("|---|---|---|---|---|")
    for label in args.methods:
        cells = []
        for side in sides:
            times = [t for run in runs[side] for t in run["rows"][label]["times"]]
            cells.append((statistics.median(times), min(times), max(times)))
        firsts = [run["rows"][label]["first"] for run in runs["now"]]
        (b, blo, bhi), (a, alo, ahi) = cells
        print(f"| {label} | {b * 1e3:.1f} ({blo * 1e3:.1f}-{bhi * 1e3:.1f}) ms | {a * 1e3:.1f} ({alo * 1e3:.1f}-"
              f"{ahi * 1e3:.1f}) ms | {a / b:.2f}x | {statistics.median(firsts) * 1e3:.0f} ms |")
    for side in sides:  # linear's share of the copy bandwidth, pairs measured back to back
        shares = sorted(x for run in runs[side] for x in run.get("shares", []))
        peaks = [run["peak"] / 1e9 for run in runs[side]]
        if shares:
            print(f"linear, {side}: {statistics.median(shares):.0%} of copy bandwidth (median of {len(shares)} "
                  f"back-to-back pairs, range {shares[0]:.0%}-{shares[-1]:.0%}; copy medians "
                  f"{', '.join(f'{x:.1f}' for x in peaks)} GB/s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--params", type=float, default=40e6)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--mergekit-repeats", type=int, default=2, help="0: no mergekit row")
    ap.add_argument("--pool-on", choices=["auto", "host", "device"], default="auto")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--compare", type=Path, help="another checkout's root, measured beside this one")
    ap.add_argument("--rounds", type=int, default=3, help="with --compare: processes per side")
    ap.add_argument("--pool-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    own_dir = args.pool_dir is None
    args.pool_dir = args.pool_dir or Path(tempfile.mkdtemp(prefix="mergeopt-mat-"))
    try:
        if args.compare:
            passthrough = [f"--{k}={v}" for k, v in (("n", args.n), ("params", args.params), ("dtype", args.dtype),
                                                     ("device", args.device), ("repeats", args.repeats),
                                                     ("pool-on", args.pool_on))]
            passthrough += ["--methods", *args.methods]
            compare(args, passthrough)
            return
        result = measure(args)
        if args.json_out:
            args.json_out.write_text(json.dumps(result))
            return
        mergekit = None
        exe = Path(sys.executable).parent / "mergekit-yaml"
        if args.mergekit_repeats and shutil.which(str(exe)):
            pool = build_pool(args.pool_dir, args.n, args.params, getattr(torch, args.dtype))[1:]
            weights = [1.0 / (i + 2) for i in range(len(pool))]
            mergekit = statistics.median(mergekit_once(pool, weights, args.pool_dir, args.dtype)
                                         for _ in range(args.mergekit_repeats))
        print_one(result, mergekit)
    finally:
        if own_dir:
            shutil.rmtree(args.pool_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
