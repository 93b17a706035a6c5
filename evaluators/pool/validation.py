"""Pool inspection and validation: everything is checked from safetensors headers before any
tensor is loaded, so a bad pool fails in milliseconds with a message naming the checkpoint and
the tensor. Values (NaN/Inf) are checked while the tensors are loaded, once per study."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from evaluators.pool.bounds import HeaderBudget, attention_refusal, count_refusal, duplicate_refusal
from evaluators.pool.tokenizer_check import Tokenizer, TokenizerMismatch, check_same_tokenizer
from evaluators.security import fileguard
from evaluators.security.fileguard import SIDE_FILES, FileRefused, Roots


class PoolError(ValueError):
    """A problem with the pool that the user can fix (bad path, mismatch, corrupt file)."""


class PoolFileRefused(PoolError):
    """A pool file that now leads outside the allowed roots, or is not a regular file."""


def _read(file: Path, who: str, roots: Roots) -> bytes:
    """A pool file's bytes, checked as it is opened (see fileguard)."""
    try:
        return fileguard.read_bytes(file, roots, "file")
    except FileRefused as exc:
        raise PoolFileRefused(f"{who}: {exc}") from exc


def _check_side_files(path: Path, who: str, roots: Roots) -> None:
    """The tokenizer loader and the export open these later: refuse a link out of the roots now."""
    for side in SIDE_FILES:
        if os.path.lexists(path / side):
            try:
                with fileguard.opened(path / side, roots, "file"):
                    pass
            except FileNotFoundError:
                continue  # a dangling link inside the roots: nothing to read, the export skips it
            except FileRefused as exc:
                raise PoolFileRefused(f"{who}: {exc}") from exc
            except OSError as exc:
                raise PoolError(f"{who}: cannot read {side}: {exc}") from exc


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    file: Path


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    config: dict
    tensors: dict[str, TensorInfo] = field(repr=False)
    # Where its files may lead when they are opened again (loading, export); None: anywhere.
    roots: tuple[Path, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def architecture(self) -> tuple[str, tuple[str, ...]]:
        return self.config.get("model_type", "?"), tuple(self.config.get("architectures") or ())

    @property
    def n_params(self) -> int:
        total = 0
        for info in self.tensors.values():
            count = 1
            for dim in info.shape:
                count *= dim
            total += count
        return total


@dataclass(frozen=True)
class PoolInfo:
    """A validated pool: optional base plus N checkpoints with identical tensor layouts."""

    checkpoints: list[CheckpointInfo]
    base: CheckpointInfo | None = None

    @property
    def reference(self) -> CheckpointInfo:
        """The checkpoint whose config/tokenizer/layout the merged model uses."""
        return self.base or self.checkpoints[0]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checkpoints]

    def fingerprint(self) -> dict:
        ref = self.reference
        layout = json.dumps(
            sorted((k, v.dtype, list(v.shape)) for k, v in ref.tensors.items())
        ).encode()
        return {
            "model_type": ref.architecture[0],
            "architectures": list(ref.architecture[1]),
            "n_tensors": len(ref.tensors),
            "n_params": ref.n_params,
            "dtypes": sorted({v.dtype for v in ref.tensors.values()}),
            "layout_sha256": hashlib.sha256(layout).hexdigest(),
            "checkpoints": self.names,
            "has_base": self.base is not None,
        }


def _read_header(file: Path, who: str, roots: Roots = None, budget: HeaderBudget | None = None) -> dict[str, dict]:
    try:
        fd = fileguard.open_file(file, roots, "file")
    except FileRefused as exc:
        raise PoolFileRefused(f"{who}: {exc}") from exc
    except OSError as exc:
        raise PoolError(f"{who}: cannot read {file.name}: {exc}") from exc
    try:
        with os.fdopen(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise PoolError(f"{who}: {file.name} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw_len)
            if 8 + n > size:
                raise PoolError(f"{who}: {file.name} has a corrupt safetensors header (length {n})")
            if why := (budget or HeaderBudget()).take(n):  # before reading it (pool_bounds.py)
                raise PoolError(f"{who}: {file.name}: {why}")
            header = json.loads(fh.read(n))
    except PoolError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PoolError(f"{who}: cannot read {file.name}: {exc}") from exc
    if not isinstance(header, dict):
        raise PoolError(f"{who}: {file.name} has a corrupt safetensors header")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, entry in header.items():
        try:
            start, end = (int(o) for o in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            str(entry["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PoolError(f"{who}: {file.name}: corrupt header entry for tensor '{name}'") from exc
        if not 0 <= start <= end <= data_len or any(d < 0 for d in shape):
            raise PoolError(f"{who}: {file.name}: tensor '{name}' points outside the file (truncated?)")
    return header


def _weight_files(path: Path, who: str, roots: Roots = None) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(_read(index, who, roots))["weight_map"]
        except (OSError, KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise PoolError(f"{who}: unreadable {index.name}: {exc}") from exc
        if not isinstance(weight_map, dict):
            raise PoolError(f"{who}: {index.name}: weight_map is not an object")
        # Shards are files of this folder: a name with a path in it could point anywhere.
        odd = sorted(str(f) for f in weight_map.values() if not isinstance(f, str) or f in ("", "..") or Path(f).name != f)
        if odd:
            raise PoolError(f"{who}: {index.name} names shard {odd[0]!r}, which is not a file name in {path}")
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise PoolError(f"{who}: shard {missing[0]} listed in {index.name} does not exist")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise PoolError(f"{who}: no .safetensors files in {path}")
    return files


def inspect_checkpoint(name: str, path: str | Path, roots: Roots = None,
                       budget: HeaderBudget | None = None) -> CheckpointInfo:
    """Read config.json and every safetensors header of one HF checkpoint directory. With
    ``roots``, every file read, and every side file the export copies, must lie inside them."""
    p = Path(path).expanduser()
    who = f"checkpoint '{name}' ({p})"
    roots = tuple(roots) if roots is not None else None
    if roots is not None and (why := fileguard.refusal(Path(os.path.realpath(p)), roots)):
        raise PoolFileRefused(f"{who}: resolves to {os.path.realpath(p)}, {why}")
    if not p.exists():
        raise PoolError(f"{who}: path does not exist")
    if not p.is_dir():
        raise PoolError(f"{who}: not a directory (expected a Hugging Face checkpoint folder)")
    try:
        config = json.loads(_read(p / "config.json", who, roots))
    except FileNotFoundError as exc:
        raise PoolError(f"{who}: no config.json") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PoolError(f"{who}: unreadable config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise PoolError(f"{who}: config.json is not a JSON object")
    if why := attention_refusal(config):
        raise PoolError(f"{who}: {why}")
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise PoolError(f"{who}: config.json 'architectures' is not a list of names")
    tensors: dict[str, TensorInfo] = {}
    for file in _weight_files(p, who, roots):
        for tname, entry in _read_header(file, who, roots, budget).items():
            tensors[tname] = TensorInfo(entry["dtype"], tuple(entry["shape"]), file)
    if not tensors:
        raise PoolError(f"{who}: holds no tensors")
    if why := count_refusal(config, list(tensors)):  # before transformers builds anything from it
        raise PoolError(f"{who}: {why}")
    if roots is not None:
        _check_side_files(p, who, roots)
    return CheckpointInfo(name=name, path=p, config=config, tensors=tensors, roots=roots)


def _check_same_layout(ref: CheckpointInfo, other: CheckpointInfo) -> None:
    if other.architecture != ref.architecture:
        raise PoolError(
            f"checkpoint '{other.name}': architecture {other.architecture} differs from "
            f"'{ref.name}' {ref.architecture}"
        )
    for tname, info in ref.tensors.items():
        mine = other.tensors.get(tname)
        if mine is None:
            raise PoolError(f"checkpoint '{other.name}': missing tensor '{tname}' (present in '{ref.name}')")
        if mine.shape != info.shape:
            raise PoolError(
                f"checkpoint '{other.name}': tensor '{tname}' has shape {list(mine.shape)}, "
                f"'{ref.name}' has {list(info.shape)}"
            )
        if mine.dtype != info.dtype:
            raise PoolError(
                f"checkpoint '{other.name}': tensor '{tname}' has dtype {mine.dtype}, "
                f"'{ref.name}' has {info.dtype}"
            )
    extra = sorted(set(other.tensors) - set(ref.tensors))
    if extra:
        raise PoolError(f"checkpoint '{other.name}': unexpected tensor '{extra[0]}' (not in '{ref.name}')")


def _model_parameters(config: dict) -> list[list[str]] | None:
    """The parameters of the model ``config`` describes, tied names together (built on the meta
    device: no memory, no weights). None when transformers cannot build it from the config alone
    (custom code): loading the model then says what is wrong."""
    import logging
    import re

    from transformers import AutoConfig, AutoModelForCausalLM

    from evaluators.adapters import transformers as transformers_adapter

    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    except Exception:  # noqa: BLE001 - any failure here is reported when the model is loaded
        return None
    finally:
        quiet.setLevel(level)
    ignored = [re.compile(p) for p in transformers_adapter.ignored_missing_keys(model)]
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [g for g in groups.values() if not any(r.search(n) for r in ignored for n in g)]


def _check_parameters(ref: CheckpointInfo) -> None:
    """A parameter no pool tensor provides would keep its random initialization: the merge would
    score differently on every load. (Tied parameters need one of their names.)"""
    for names in _model_parameters(ref.config) or ():
        if not any(n in ref.tensors for n in names):
            tied = " (config.json has tie_word_embeddings: false)" if names[0] == "lm_head.weight" \
                and ref.config.get("tie_word_embeddings") is False else ""
            raise PoolError(
                f"checkpoint '{ref.name}': the model's parameter '{names[0]}' has no tensor in its "
                f"files{tied}; it would be left at random initialization"
            )


def validate_pool(
    checkpoints: list[tuple[str, str | Path]], base: str | Path | None = None, *, roots: Roots = None
) -> PoolInfo:
    """Inspect and cross-check a pool; raises PoolError naming the first offender. With
    ``roots`` (the service), files must lie inside them now and whenever they are opened later."""
    if not checkpoints:
        raise PoolError("the pool is empty: list at least one checkpoint")
    dupes = sorted(n for n, k in Counter(n for n, _ in checkpoints).items() if k > 1)
    if dupes:
        raise PoolError(f"checkpoint name '{dupes[0]}' is used twice")
    if why := duplicate_refusal(checkpoints):  # resolved first: a link is no second model
        raise PoolError(why)
    budget = HeaderBudget()
    infos = [inspect_checkpoint(n, p, roots, budget) for n, p in checkpoints]
    base_info = inspect_checkpoint("base", base, roots, budget) if base is not None else None
    pool = PoolInfo(checkpoints=infos, base=base_info)
    for other in ([*infos] if base_info else infos[1:]):
        _check_same_layout(pool.reference, other)
    _check_parameters(pool.reference)  # the layouts are the same: the reference speaks for all
    _check_same_tokenizer(pool.reference, [c for c in (base_info, *infos) if c is not None and c is not pool.reference])
    return pool


def _check_same_tokenizer(ref: CheckpointInfo, others: list[CheckpointInfo]) -> None:
    """Every member's tokenizer against the reference's, whatever the format (tokenizer_check)."""
    def load(info: CheckpointInfo) -> Tokenizer:
        return Tokenizer(f"checkpoint '{info.name}'", info.path,
                         lambda f: _read(f, f"checkpoint '{info.name}'", info.roots))

    try:
        check_same_tokenizer(load(ref), [load(o) for o in others])
    except TokenizerMismatch as exc:
        raise PoolError(str(exc)) from exc
    except OSError as exc:
        raise PoolError(f"cannot read a tokenizer file: {exc}") from exc


def load_checkpoint_tensors(
    info: CheckpointInfo, names: list[str], device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """Load tensors in ``names`` order; NaN/Inf values are a PoolError naming the tensor."""
    by_file: dict[Path, list[str]] = {}
    for n in names:
        by_file.setdefault(info.tensors[n].file, []).append(n)
    out: dict[str, torch.Tensor] = {}
    for file, wanted in by_file.items():
        try:
            # The file checked as it is opened, then read through that descriptor's name.
            with fileguard.by_name(file, info.roots, "file") as name, \
                    safe_open(name, framework="pt", device=str(device)) as fh:
                for n in wanted:
                    out[n] = fh.get_tensor(n)
        except FileRefused as exc:
            raise PoolFileRefused(f"checkpoint '{info.name}': {exc}") from exc
        except Exception as exc:  # safetensors raises its own error types
            raise PoolError(f"checkpoint '{info.name}': cannot load {file.name}: {exc}") from exc
    for n in names:
        t = out[n]
        if tuple(t.shape) != info.tensors[n].shape:  # the file changed since it was validated
            raise PoolError(f"checkpoint '{info.name}': tensor '{n}' has shape {list(t.shape)}, "
                            f"{list(info.tensors[n].shape)} when the pool was validated")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise PoolError(f"checkpoint '{info.name}': tensor '{n}' contains NaN or Inf values")
    return [out[n] for n in names]
