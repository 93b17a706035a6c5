"""mergekit YAML <-> (MergeSpec, pool paths). `mergeopt merge` reads it; `mergeopt export` writes
it next to the exported checkpoint so `mergekit-yaml` reproduces the same tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from contract.merge import BASE_WEIGHT, MergeSpec
from contract.methods import METHOD_INFO
from evaluators.merging.granular_yaml import granular_inputs
from evaluators.merging.granularity import TensorGroups
from evaluators.security import yaml_bounds

DTYPES = {"float32", "float16", "bfloat16", "float64"}


def _shown(value) -> str:
    """A value in an error message: its repr, cut short (a config's value may be huge)."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "...(cut)"


class MergeConfigError(ValueError):
    """A mergekit YAML this tool cannot run; the message says which key."""


@dataclass(frozen=True)
class MergeJob:
    spec: MergeSpec
    checkpoints: list[tuple[str, Path]]
    base: Path | None
    out_dtype: str | None  # mergekit's `out_dtype`: the one cast at the end (None: stay in dtype)
    dtype: str | None = None  # mergekit's `dtype`: inputs cast to it, merged in it (None: as stored)


def _scalar(value, key: str, model: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MergeConfigError(
            f"models[{model}].parameters.{key}: only a single number is supported, got {_shown(value)} "
            "(per-layer gradients and filters are not)"
        )
    return float(value)


def _names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        stem = "".join(ch if ch.isalnum() or ch in "_.-" else "_" for ch in p.name) or "model"
        name, i = stem, 2
        while name in names:
            name, i = f"{stem}_{i}", i + 1
        names.append(name)
    return names


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MergeConfigError(f"{where} must be a mapping, got {_shown(value)}")
    return value


def _number(value, where: str, kind=float):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MergeConfigError(f"{where} must be a number, got {_shown(value)}")
    return kind(value)


def parse_mergekit_yaml(text: str, base_dir: Path) -> MergeJob:
    try:
        cfg = yaml_bounds.safe_load(text)  # an alias bomb is refused before it is built
    except yaml_bounds.YamlTooLarge as exc:
        raise MergeConfigError(f"the config is too large: {exc}") from None
    except yaml.YAMLError as exc:
        raise MergeConfigError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise MergeConfigError("the config must be a mapping")
    method = cfg.get("merge_method")
    if method not in METHOD_INFO:
        raise MergeConfigError(f"merge_method {_shown(method)} is not supported (use one of {sorted(METHOD_INFO)})")
    info = METHOD_INFO[method]
    models = cfg.get("models")
    if not isinstance(models, list) or not models:
        raise MergeConfigError("'models' must be a non-empty list of {model: PATH, parameters: {...}}")

    def resolve(p, where: str) -> Path:
        if not isinstance(p, str):
            raise MergeConfigError(f"{where} must be a path string, got {_shown(p)}")
        path = Path(p).expanduser()
        return path if path.is_absolute() else (base_dir / path).resolve()

    base = resolve(cfg["base_model"], "base_model") if cfg.get("base_model") else None
    entries = []
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            raise MergeConfigError(f"models[{i}] must be a mapping {{model: PATH, parameters: {{...}}}}, got {_shown(m)}")
        entries.append((resolve(m.get("model"), f"models[{i}].model"), _mapping(m.get("parameters"), f"models[{i}].parameters")))
    if base is not None and method == "linear" and base not in [p for p, _ in entries]:
        # mergekit treats a linear base_model as one more input that needs a weight.
        raise MergeConfigError("linear: base_model must also be listed under models with a weight (as mergekit requires)")
    # mergekit lists the base among the models sometimes; it contributes no task vector.
    entries = [(p, params) for p, params in entries if p != base or not info.needs_base]
    names = _names([p for p, _ in entries])
    weights, densities = {}, {}
    for name, (_, params) in zip(names, entries, strict=True):
        if "weight" not in params:
            raise MergeConfigError(f"models[{name}].parameters.weight is required")
        weights[name] = _scalar(params["weight"], "weight", name)
        if "density" in params:
            densities[name] = _scalar(params["density"], "density", name)
    if info.needs_base and base is None:
        raise MergeConfigError(f"merge_method {method} needs base_model")
    glob = _mapping(cfg.get("parameters"), "parameters")
    rescale = glob.get("rescale", info.randomized)
    if rescale is not info.randomized:
        # DARE always rescales here; TIES / task arithmetic never do (mergekit's defaults).
        raise MergeConfigError(f"parameters.rescale: {_shown(rescale)} is not supported for {method}")
    try:
        spec = MergeSpec(
            method=method,
            weights=weights,
            density=(densities if densities else None) if info.uses_density else None,
            lambda_=_number(glob.get("lambda", 1.0), "parameters.lambda"),
            normalize=glob.get("normalize"),
            seed=_number(cfg.get("random_seed", 0) or 0, "random_seed", int),
        )
    except ValidationError as exc:
        raise MergeConfigError("; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )) from None
    dtypes = {key: cfg.get(key) or None for key in ("dtype", "out_dtype")}
    for key, value in dtypes.items():
        if value is not None and value not in DTYPES:
            raise MergeConfigError(f"{key} {_shown(value)} is not one of {sorted(DTYPES)}")
    return MergeJob(spec=spec, checkpoints=list(zip(names, [p for p, _ in entries], strict=True)), base=base,
                    out_dtype=dtypes["out_dtype"], dtype=dtypes["dtype"])


def _absolute(path: str | Path) -> str:
    return os.path.abspath(path)  # not resolve(): a pool reached through a link keeps its name


def to_mergekit_yaml(
    spec: MergeSpec, checkpoints: list[tuple[str, Path]], base: Path | None, out_dtype: str | None,
    dtype: str | None = "float32", groups: TensorGroups | None = None,
) -> str:
    """A mergekit config reproducing ``spec``. The search computes in fp32, so an export asks
    mergekit to do the same (``dtype: float32``) and cast once at the end (``out_dtype``);
    `mergeopt merge` passes on the config's own ``dtype`` (None: the key is left out). A granular
    spec needs ``groups``, the pool's tensor groups for its granularity."""
    densities = dict(zip([n for n, _ in checkpoints], spec.density_vector([n for n, _ in checkpoints]), strict=True))
    models = []
    for name, path in checkpoints:
        params: dict = {"weight": float(spec.weights.get(name, 0.0))}
        if spec.info.uses_density:
            params["density"] = densities[name]
        models.append({"model": _absolute(path), "parameters": params})
    if spec.has_base_weight:  # listed last, where the resident merge adds it (mergekit sums in list order)
        if base is None:
            raise MergeConfigError(f"the merge weighs the base ('{BASE_WEIGHT}') but the pool has none")
        models.append({"model": _absolute(base), "parameters": {"weight": float(spec.weights.get(BASE_WEIGHT, 0.0))}})
    cfg: dict = {"merge_method": spec.method, "models": models}
    if spec.granularity is not None:  # per-group weights: filters and/or slices (granular_yaml.py)
        if groups is None:
            raise ValueError("a granular merge is exported with its pool's tensor groups")
        del cfg["models"]
        cfg |= granular_inputs(spec, [(n, _absolute(p)) for n, p in checkpoints],
                               _absolute(base) if base is not None else None, groups, densities)
    if spec.needs_base:
        cfg["base_model"] = _absolute(base)
    cfg["parameters"] = {"normalize": spec.resolved_normalize}
    if spec.needs_base:
        cfg["parameters"]["lambda"] = spec.lambda_
    if dtype is not None:
        cfg["dtype"] = dtype
    if out_dtype is not None:
        cfg["out_dtype"] = out_dtype
    header = "# written by mergeopt; reproduce with: mergekit-yaml mergekit_config.yml OUT_DIR\n"
    if spec.info.randomized:
        header += (
            "# NOTE: DARE drop masks are random. mergeopt seeds them per tensor (seed "
            f"{spec.seed}); mergekit draws its own, so its tensors differ in which entries drop.\n"
        )
        cfg["random_seed"] = spec.seed
    return header + yaml.safe_dump(cfg, sort_keys=False)
