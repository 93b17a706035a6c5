"""`datasets` internals mergeopt relies on, and nothing else touches: how it tells a packaged
builder from a dataset folder, expands a data_files pattern, infers data files, and reads a local
dataset folder's README configs. Task files are checked and staged with exactly these, so the
files checked are the files `datasets` reads. tests/test_adapters.py passes on datasets 4.0.0,
4.8.5, 5.0.0 and 5.2.0; pyproject pins that range."""

from __future__ import annotations


def is_packaged_builder(name: str) -> bool:
    """Whether ``dataset_path`` names a builder shipped with `datasets` (json, csv, text...).
    Relies on: ``datasets.packaged_modules._PACKAGED_DATASETS_MODULES``."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return name in _PACKAGED_DATASETS_MODULES


def matching_files(pattern: str, base: str) -> list[str]:
    """The files `datasets` reads for one data_files pattern (globs, hidden files as it treats
    them); none where it matches nothing or refuses the pattern.
    Relies on: ``datasets.data_files.resolve_pattern(pattern, base_path=)``."""
    from datasets.data_files import resolve_pattern

    try:
        return resolve_pattern(pattern, base_path=base)
    except (FileNotFoundError, ValueError):  # no match, or a pattern it refuses: it reads nothing
        return []


def inferred_data_files(base: str) -> dict[str, list[str]] | None:
    """split -> patterns a builder without data_files reads in ``base`` (None: no data files).
    Relies on: ``datasets.data_files.get_data_patterns(base_path)``."""
    from datasets.data_files import get_data_patterns

    try:
        return {k: list(v) for k, v in get_data_patterns(base).items()}
    except Exception:  # EmptyDatasetError: no data files there, nothing read
        return None


def local_folder_configs(path: str, data_dir: str | None, data_files) -> list[tuple[dict | None, str | None]]:
    """(data_files, data_dir) of a local dataset folder as `datasets` reads it: the given or
    inferred data files, then each config of the folder's README. Raises what `datasets` raises
    for a folder it cannot read. Relies on: ``datasets.load.LocalDatasetModuleFactory(path,
    data_dir=, data_files=).get_module()``, its ``builder_kwargs`` and
    ``builder_configs_parameters.builder_configs`` (each with ``data_files`` and ``data_dir``)."""
    from datasets.load import LocalDatasetModuleFactory

    module = LocalDatasetModuleFactory(path, data_dir=data_dir, data_files=data_files).get_module()
    configs = [(module.builder_kwargs.get("data_files"), data_dir)]
    configs += [(c.data_files, c.data_dir) for c in module.builder_configs_parameters.builder_configs or []]
    return configs
