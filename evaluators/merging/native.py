"""The CPU merges as compiled passes (native/linear.c, native/combine.c), loaded through ctypes.

Why: torch runs a linear merge as N + 3 kernels per chunk (N fused multiply-adds into an fp32
accumulator, a division, a cast), each a pass over that accumulator; on a CPU that held the
fused pass at ~22-30% of copy bandwidth whatever the chunk size or thread count
(bench/RESULTS.md). Task arithmetic takes ~8 kernels per chunk and TIES ~20 per tensor. The C
loops read each entry once and write it once, with the same arithmetic step for step (fmaf where
torch's addcmul_ fuses, rounded products and sums in torch's order elsewhere, IEEE division,
round-to-nearest-even), so their results equal torch's bit for bit (tests/test_native.py).

The library is compiled on first use with the system's C compiler into a per-user cache, keyed by
the source, compiler flags and machine; without a compiler (or turned off: configure, from
EvaluatorOptions.native, MERGEOPT_NATIVE=0) callers get None and keep torch's path."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name("native") / name for name in ("linear.c", "combine.c")]
_SUFFIX = {torch.bfloat16: "bf16", torch.float32: "f32"}
# torch's sum over N rows adds them in order on its vectorized columns, but in 4 interleaved
# partial sums on the few scalar columns ending each thread's range: the same order for N <= 4
# only, so the compiled task arithmetic / TIES take pools of 2-4 checkpoints (linear: any N).
MAX_N = 4
_SPLIT = 1 << 16  # entries per thread task: large enough that a call's cost is nothing
_I64, _PTR, _INT, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "linear": [_PTR, _I64, _I64, _PTR, _INT, _F32, _PTR, _I64],
    "task_arithmetic": [_PTR, _I64, _PTR, _I64, _PTR, _INT, _F32, _INT, _F32, _PTR, _I64],
    "ties": [_PTR, _I64, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _PTR, _INT, _INT, _F32, _PTR, _I64],
}


def _flags() -> list[str]:
    """Vector flags this CPU has (results do not depend on them: every step is exactly rounded)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = ["-mavx2", "-mfma"] if " avx2 " in info and " fma " in info else []
    return flags + (["-mavx512f"] if flags and " avx512f " in info else [])


_config: dict = {"enabled": True, "cache_dir": None}


def configure(enabled: bool = True, cache_dir: Path | None = None) -> None:
    """Whether the kernels are used, and where they are compiled to (None: ~/.cache/mergeopt): one
    library per process, so set where a pool is built (resident.py, from EvaluatorOptions)."""
    if _config != {"enabled": enabled, "cache_dir": cache_dir}:
        _config.update(enabled=enabled, cache_dir=cache_dir)
        library.cache_clear()


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, turned off by configure, not a Linux x86/ARM host)."""
    if not _config["enabled"]:
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.info("no C compiler: the linear merge runs as torch kernels")
        return None
    # -ffp-contract=off: a product and a sum stay two roundings, as in torch's kernels
    args = ["-O3", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", *_flags()]
    source = b"".join(path.read_bytes() for path in SOURCES)
    key = hashlib.sha256(source + " ".join([compiler, *args, platform.machine()]).encode()).hexdigest()
    folder = Path(_config["cache_dir"] or Path.home() / ".cache" / "mergeopt") / "native"
    target = folder / f"merge-{key[:16]}.so"
    try:
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, renamed into place
                built = Path(tmp) / target.name
                subprocess.run([compiler, *args, "-o", str(built), *map(str, SOURCES)], check=True,
                               capture_output=True, timeout=120)
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("native linear merge unavailable (%s): torch kernels instead", exc)
        return None
    for name, argtypes in _SIGNATURES.items():
        for suffix in _SUFFIX.values():
            getattr(lib, f"{name}_{suffix}").argtypes = argtypes
    return lib


def _rows_ok(t: torch.Tensor) -> bool:
    """[N, ...] on the CPU whose rows are each contiguous (a tensor's view of the flat pool)."""
    return t.device.type == "cpu" and t.dim() >= 1 and t[0].is_contiguous() if t.shape[0] else False


def supports(out: torch.Tensor, flat: torch.Tensor, *others: torch.Tensor, max_n: int | None = None) -> bool:
    """One dtype (bf16 or fp32) everywhere, CPU, rows contiguous, N within ``max_n``, a library."""
    return (out.device.type == "cpu" and out.is_contiguous() and flat.dtype == out.dtype and flat.dtype in _SUFFIX
            and _rows_ok(flat) and all(t.device.type == "cpu" and t.is_contiguous() for t in others)
            and all(t.dtype == out.dtype for t in others) and (max_n is None or 2 <= flat.shape[0] <= max_n)
            and library() is not None)


def _kernel(name: str, dtype: torch.dtype):
    return getattr(library(), f"{name}_{_SUFFIX[dtype]}")


def _split(pieces, call) -> None:
    """``call(start, end, row)`` over pieces cut to _SPLIT entries, on torch's thread count."""
    tasks = [(s, min(b, s + _SPLIT), r) for a, b, r in pieces for s in range(a, b, _SPLIT)]
    threads = max(1, min(torch.get_num_threads(), len(tasks)))
    if threads == 1:
        for task in tasks:
            call(*task)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda task: call(*task), tasks))


def linear_pieces(out: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor, totals: list[float],
                  pieces: list[tuple[int, int, int]], normalize: bool) -> None:
    """out[a:b] = the linear merge of flat[:, a:b] with weight row ``rows[r]`` for each (a, b, r)
    (ctypes releases the GIL during each call, so the threads run in parallel)."""
    kernel = _kernel("linear", flat.dtype)
    n, stride, item = flat.shape[0], flat.stride(0), flat.element_size()
    weights = rows.to(torch.float32).contiguous()

    def call(s: int, e: int, r: int) -> None:
        kernel(flat.data_ptr() + s * item, stride, n, weights[r].data_ptr(), int(normalize), totals[r],
               out.data_ptr() + s * item, e - s)

    _split(pieces, call)


def task_arithmetic_pieces(out: torch.Tensor, flat_base: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor,
                           divisors: list[float], pieces: list[tuple[int, int, int]], *, normalize: bool,
                           lambda_: float) -> None:
    """out[a:b] = base + lambda * sum_i w_i (t_i - base) (/ divisor) with ``rows[r]``, per piece."""
    kernel = _kernel("task_arithmetic", flat.dtype)
    n, stride, item = flat.shape[0], flat.stride(0), flat.element_size()
    weights = rows.to(torch.float32).contiguous()

    def call(s: int, e: int, r: int) -> None:
        kernel(flat.data_ptr() + s * item, stride, flat_base.data_ptr() + s * item, n, weights[r].data_ptr(),
               int(normalize), divisors[r], int(lambda_ != 1), lambda_, out.data_ptr() + s * item, e - s)

    _split(pieces, call)


def ties(stack: torch.Tensor, base: torch.Tensor, ranks: torch.Tensor, weights, densities: list[float], *,
         normalize: bool, lambda_: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """merge_methods.ties of one tensor with cached int32 ``ranks`` (magnitude_ranks), in the
    pool's dtype, written into ``out`` when given."""
    n, numel = stack.shape[0], base.numel()
    out = torch.empty_like(base) if out is None else out
    w = torch.as_tensor(weights, dtype=torch.float32).contiguous()
    # magnitude_prune's three cases: ranked below k, the whole row (density >= 1), zeros (<= 0)
    k = torch.tensor([max(1, int(p * numel)) for p in densities], dtype=torch.int64)
    mode = torch.tensor([0 if 0 < p < 1 else 1 if p >= 1 else 2 for p in densities], dtype=torch.int8)
    kernel, item = _kernel("ties", stack.dtype), stack.element_size()
    rank_item = ranks.element_size()

    def call(s: int, e: int, _: int) -> None:
        kernel(stack.data_ptr() + s * item, stack.stride(0), ranks.data_ptr() + s * rank_item, ranks.stride(0),
               base.data_ptr() + s * item, n, w.data_ptr(), k.data_ptr(), mode.data_ptr(), int(normalize),
               int(lambda_ != 1), lambda_, out.data_ptr() + s * item, e - s)

    _split([(0, numel, 0)], call)
    return out
