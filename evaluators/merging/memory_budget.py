"""One memory budget per study: where the pool is placed and what is cached beside it.

MERGEOPT_MEMORY_BUDGET (bytes with an optional unit - "24GiB", "12G", "500MB" - or a share of the
memory available at study start - "0.6", "60%") is what a study may hold on its device: the GPU's
for a pool on the GPU, the host's otherwise. Unset: DEFAULT_SHARE of what is available when the
pool is loaded (free GPU memory, or the host's MemAvailable). The same number decides

- placement (streaming.should_stream): pool + base + model must fit it on a GPU, else the pool
  stays in host memory and is streamed;
- caches (Caches below): what is left beside that floor holds fp32 task vectors (task
  arithmetic) and int32 magnitude rankings (TIES) while they fit; a tensor that does not fit is
  merged by the bounded paths of fused.py / bounded_merge.py, with the same result bit for bit.

The service reads the variable (service/settings.py) and passes it in (EvaluatorOptions.memory_budget,
options.py); evaluators never read the environment."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable

import torch

ENV = "MERGEOPT_MEMORY_BUDGET"
DEFAULT_SHARE = 0.7  # the share of free GPU memory the placement rule has always used
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(%|[kmgt]i?)?b?\s*$", re.IGNORECASE)


def parse(text: str) -> tuple[str, float]:
    """("share", fraction) or ("bytes", count). A bare number up to 1 is a share, above 1 bytes."""
    match = _PATTERN.match(text)
    if not match:
        raise ValueError(f"{ENV} must be bytes ('24GiB', '12G', '500MB', '2e10') or a share "
                         f"of available memory ('0.6', '60%'), not '{text}'")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if unit == "%":
        value, unit = value / 100, ""
        if not 0 < value <= 1:
            raise ValueError(f"{ENV}: a share must lie in (0%, 100%], not '{text}'")
        return "share", value
    if not unit and value <= 1:
        if value <= 0:
            raise ValueError(f"{ENV} must be positive, not '{text}'")
        return "share", value
    return "bytes", value * _UNITS[unit]


def available(device: torch.device) -> int:
    """Free memory of ``device`` now: the GPU's free bytes, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve(device: torch.device, setting: str | int | None = None) -> int:
    """The budget in bytes: ``setting`` (bytes, or a MERGEOPT_MEMORY_BUDGET string); None: the
    default share."""
    if isinstance(setting, int):
        return setting
    kind, value = parse(setting) if setting is not None else ("share", DEFAULT_SHARE)
    return int(value * available(device)) if kind == "share" else int(value)


class Caches:
    """Tensors kept within ``budget - floor`` (the floor: what the study holds anyway), by kind.
    A cache that does not fit evicts the least recently used other kinds first (a study's set-up
    trials run every method once; its search then uses one), never its own kind."""

    def __init__(self, budget: int, floor: int) -> None:
        self.budget, self.floor = budget, floor
        self._kinds: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    @staticmethod
    def _bytes(entries: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in entries.values())

    @property
    def held(self) -> int:
        return sum(self._bytes(e) for e in self._kinds.values())

    @property
    def free(self) -> int:
        return max(0, self.budget - self.floor - self.held)

    def room(self, kind: str) -> int:
        """What ``kind`` could take: the free bytes and those other kinds hold."""
        return max(0, self.budget - self.floor - self._bytes(self._kinds.get(kind, {})))

    def get(self, kind: str, key: str) -> torch.Tensor | None:
        entries = self._kinds.get(kind)
        if entries is None or key not in entries:
            return None
        self._kinds.move_to_end(kind)
        return entries[key]

    def put(self, kind: str, key: str, nbytes: int, build: Callable[[], torch.Tensor],
            scratch: int = 0) -> torch.Tensor | None:
        """``build()`` kept under (kind, key) if ``nbytes`` (+ ``scratch`` while it is built) fit,
        after evicting other kinds as needed; None (nothing built) if they cannot."""
        if nbytes + scratch > self.room(kind):
            return None
        for other in [k for k in self._kinds if k != kind]:
            if nbytes + scratch <= self.free:
                break
            del self._kinds[other]
        tensor = build()
        self._kinds.setdefault(kind, {})[key] = tensor
        self._kinds.move_to_end(kind)
        return tensor
