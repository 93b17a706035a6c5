"""Chunks of a flat buffer delivered to the compute device, for pools that do not fit on it.

A pool too big for the GPU stays in pinned host memory. Each candidate then streams it through
two device staging buffers: while chunk k is being merged on the compute stream, chunk k+1 is
copied host -> device on a side stream, so the merge runs at PCIe speed rather than stalling on
each copy. The same code runs on a CPU (plain copies, no streams), which is how the tests check
that a streamed merge equals the resident one."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from evaluators.merging import memory_budget


def resident_bytes(n_checkpoints: int, numel: int, itemsize: int, has_base: bool = True) -> int:
    """What a study keeps resident: the checkpoints, the base and the model's one copy. Task
    vectors are formed per chunk (fused.py) or per tensor, never kept for the whole pool, so
    they add one chunk or one tensor, not N x P fp32. The placement rule below and
    bench/memory.py's floor are this number."""
    return (n_checkpoints + int(has_base) + 1) * numel * itemsize


def should_stream(n_checkpoints: int, numel: int, itemsize: int, device: torch.device,
                  budget: int | None = None, pool_on: str = "auto") -> bool:
    """Keep the pool on the host when pool + base + model exceed the GPU's memory budget
    (memory_budget.py; None: the study's, by default 70% of the free memory). A CPU pool is on
    the host anyway. ``pool_on`` host or device (MERGEOPT_POOL_ON) forces the choice (benchmarks, tests)."""
    if pool_on not in {"auto", "host", "device"}:
        raise ValueError(f"MERGEOPT_POOL_ON must be auto, host or device, not '{pool_on}'")
    if pool_on != "auto":
        return pool_on == "host"
    if device.type != "cuda":
        return False
    budget = memory_budget.resolve(device) if budget is None else budget
    return resident_bytes(n_checkpoints, numel, itemsize) > budget


def host_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked where CUDA is present (asynchronous DMA needs it), plain memory otherwise."""
    return torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())


def device_chunks(src: torch.Tensor, device: torch.device, step: int, *, stage: bool = False,
                  ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, src[..., start:end] on ``device``) over the last dimension of ``src``.

    ``src`` on ``device`` and ``stage`` false: views, no copy. Otherwise double-buffered staging;
    a chunk is valid until the next one is requested (its buffer is then refilled)."""
    total = src.shape[-1]
    if src.device == device and not stage:
        for s in range(0, total, step):
            yield s, min(total, s + step), src[..., s:s + step]
        return
    rows = src.reshape(-1, total)  # a [P] base streams as one row
    width = min(step, total)
    bufs = [torch.empty((rows.shape[0], width), dtype=src.dtype, device=device) for _ in range(2)]
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    copied: list[torch.cuda.Event | None] = [None, None]

    def issue(k: int) -> tuple[int, int, torch.Tensor]:
        s = k * step
        e = min(total, s + step)
        buf = bufs[k % 2][:, : e - s]
        if side is None:
            buf.copy_(rows[:, s:e])
        else:
            # The side stream may only overwrite this buffer once the merge of the chunk that
            # used it last (k - 2) is done: everything queued on the compute stream so far.
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for i in range(rows.shape[0]):  # contiguous row pieces: true async DMA
                    buf[i].copy_(rows[i, s:e], non_blocking=True)
                copied[k % 2] = torch.cuda.Event()
                copied[k % 2].record(side)
        return s, e, buf

    n = -(-total // step)
    ahead = issue(0)
    for k in range(n):
        s, e, buf = ahead
        if side is not None:
            torch.cuda.current_stream(device).wait_event(copied[k % 2])
        if k + 1 < n:
            ahead = issue(k + 1)  # overlaps with the caller's work on this chunk
        yield s, e, buf.reshape(*src.shape[:-1], e - s)
