"""The resident pool and model: tensors are loaded once per study, and every candidate is written
in place into one transformers model. Nothing is written to disk or reloaded per trial."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel

from evaluators.merge_spec import MergeSpec, merge_tensor
from evaluators.pool import PoolError, PoolInfo, load_checkpoint_tensors

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ResidentPool:
    """All checkpoints stacked per parameter ([N, *shape], stored dtype) plus the base, and the
    task vectors (fp32) computed on first use by a task-vector method."""

    def __init__(self, pool: PoolInfo, device: torch.device, progress: bool = False) -> None:
        self.pool = pool
        self.device = device
        self.tensor_names = sorted(pool.reference.tensors)
        self.checkpoint_names = pool.names
        n = len(pool.checkpoints)
        self.stacks: dict[str, torch.Tensor] = {}
        for i, info in enumerate(tqdm(pool.checkpoints, desc="loading pool", disable=not progress)):
            for tname, t in zip(self.tensor_names, load_checkpoint_tensors(info, self.tensor_names, device), strict=True):
                if tname not in self.stacks:
                    self.stacks[tname] = torch.empty((n, *t.shape), dtype=t.dtype, device=device)
                self.stacks[tname][i].copy_(t)
        self.base: dict[str, torch.Tensor] | None = None
        if pool.base is not None:
            loaded = load_checkpoint_tensors(pool.base, self.tensor_names, device)
            self.base = dict(zip(self.tensor_names, loaded, strict=True))
        self._deltas: dict[str, torch.Tensor] | None = None

    def deltas(self) -> dict[str, torch.Tensor]:
        if self.base is None:
            raise PoolError("this merge method needs a base model: set pool.base")
        if self._deltas is None:
            from evaluators.merge_methods import task_vectors

            self._deltas = {k: task_vectors(self.base[k], self.stacks[k]) for k in self.tensor_names}
        return self._deltas

    def merged(self, spec: MergeSpec, tensor_name: str) -> torch.Tensor:
        if spec.needs_base:
            deltas = self.deltas()
            return merge_tensor(
                spec, self.checkpoint_names, tensor_name,
                base=self.base[tensor_name], deltas=deltas[tensor_name],
            )
        return merge_tensor(spec, self.checkpoint_names, tensor_name, tensors=self.stacks[tensor_name])


class ResidentModel:
    """One transformers model whose parameters are overwritten in place by each candidate."""

    def __init__(self, pool: ResidentPool) -> None:
        self.pool = pool
        ref = pool.pool.reference
        try:
            model = AutoModelForCausalLM.from_pretrained(str(ref.path), dtype="auto")
        except Exception as exc:
            raise PoolError(f"checkpoint '{ref.name}': transformers cannot load it: {exc}") from exc
        self.model: PreTrainedModel = model.to(pool.device).eval()
        state = self.model.state_dict()
        missing = [n for n in pool.tensor_names if n not in state]
        if missing:
            raise PoolError(f"checkpoint '{ref.name}': tensor '{missing[0]}' is not a parameter of the model")
        # state_dict() tensors share storage with the parameters: copy_ writes the model.
        self.targets = {n: state[n] for n in pool.tensor_names}

    @torch.no_grad()
    def materialize(self, spec: MergeSpec) -> PreTrainedModel:
        for name, target in self.targets.items():
            target.copy_(self.pool.merged(spec, name))
        return self.model

    @torch.no_grad()
    def state_for_export(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """Merged tensors under their checkpoint names (the file layout, not the module layout)."""
        self.materialize(spec)
        return {n: t.detach().to("cpu").contiguous() for n, t in self.targets.items()}
