"""The CPU linear merge as one compiled pass (native/linear.c), loaded through ctypes.

Why: torch runs a linear merge as N + 3 kernels per chunk (N fused multiply-adds into an fp32
accumulator, a division, a cast), each a pass over that accumulator; on a CPU that held the
fused pass at ~22-30% of copy bandwidth whatever the chunk size or thread count
(bench/RESULTS.md). The C loop reads each entry once and writes it once, with the same
arithmetic (fmaf, one IEEE division, round-to-nearest-even), so its results equal torch's bit for
bit (tests/test_fused.py checks them against merge_methods.linear).

The library is compiled on first use with the system's C compiler into a per-user cache, keyed by
the source, compiler flags and machine; without a compiler (or with MERGEOPT_NATIVE=0) callers
get None and keep torch's path."""

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
SOURCE = Path(__file__).with_name("native") / "linear.c"
_KERNELS = {torch.bfloat16: "linear_bf16", torch.float32: "linear_f32"}
_SPLIT = 1 << 16  # entries per thread task: large enough that a call's cost is nothing


def _flags() -> list[str]:
    """Vector flags this CPU has (results do not depend on them: every step is exactly rounded)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    flags = ["-mavx2", "-mfma"] if " avx2 " in info and " fma " in info else []
    return flags + (["-mavx512f"] if flags and " avx512f " in info else [])


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, MERGEOPT_NATIVE=0, not a Linux x86/ARM host)."""
    if os.environ.get("MERGEOPT_NATIVE", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.info("no C compiler: the linear merge runs as torch kernels")
        return None
    args = ["-O3", "-shared", "-fPIC", "-fno-fast-math", *_flags()]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *args, platform.machine()]).encode()).hexdigest()
    folder = Path(os.environ.get("MERGEOPT_CACHE_DIR", Path.home() / ".cache" / "mergeopt")) / "native"
    target = folder / f"linear-{key[:16]}.so"
    try:
        if not target.exists():
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:  # built aside, renamed into place
                built = Path(tmp) / target.name
                subprocess.run([compiler, *args, "-o", str(built), str(SOURCE)], check=True, capture_output=True,
                               timeout=120)
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("native linear merge unavailable (%s): torch kernels instead", exc)
        return None
    for name in _KERNELS.values():
        getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                       ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_int64]
    return lib


def supports(out: torch.Tensor, flat: torch.Tensor) -> bool:
    return (out.device.type == "cpu" and flat.device.type == "cpu" and flat.dtype == out.dtype
            and flat.dtype in _KERNELS and flat.is_contiguous() and out.is_contiguous() and library() is not None)


def linear_pieces(out: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor, totals: list[float],
                  pieces: list[tuple[int, int, int]], normalize: bool) -> None:
    """out[a:b] = the linear merge of flat[:, a:b] with weight row ``rows[r]`` for each (a, b, r),
    split over torch's intra-op thread count (ctypes releases the GIL during each call)."""
    kernel = getattr(library(), _KERNELS[flat.dtype])
    n, stride, item = flat.shape[0], flat.shape[1], flat.element_size()
    weights = rows.to(torch.float32).contiguous()
    tasks = [(s, min(b, s + _SPLIT), r) for a, b, r in pieces for s in range(a, b, _SPLIT)]

    def run(task: tuple[int, int, int]) -> None:
        s, e, r = task
        kernel(flat.data_ptr() + s * item, stride, n, weights[r].data_ptr(), int(normalize), totals[r],
               out.data_ptr() + s * item, e - s)

    threads = max(1, min(torch.get_num_threads(), len(tasks)))
    if threads == 1:
        for task in tasks:
            run(task)
        return
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, tasks))
