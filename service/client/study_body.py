"""The POST /v1/studies body from what a user has: a study YAML, a dict or a StudySpec."""

from __future__ import annotations

from pathlib import Path

import yaml

from optimizer.spec import SpecError, StudySpec, parse_spec
from service.client.errors import MergeoptError

# Keys of the request body that are not part of a study YAML for `mergeopt run`.
SERVICE_KEYS = ("priority", "pool_id", "suite_id")


def _dumped(spec: StudySpec) -> dict:
    # Defaults left out: the server fills its own, and an older server is not sent fields it lacks.
    # storage is the server's business (its database holds every study).
    return spec.model_dump(mode="json", exclude_defaults=True, exclude={"storage"}) | {"name": spec.name}


def study_body(study) -> dict:
    if isinstance(study, StudySpec):
        return _dumped(study)
    if isinstance(study, dict):
        return dict(study)
    path = Path(study)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MergeoptError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise MergeoptError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MergeoptError(f"{path}: a study YAML is a mapping (name, pool, suite, search)")
    extra = {k: data.pop(k) for k in SERVICE_KEYS if k in data}
    if "pool" not in data or "suite" not in data:  # references to registered ones: the server checks
        return data | extra
    try:  # checked here and paths resolved from the YAML's folder, as `mergeopt run` does
        return _dumped(parse_spec(data, base_dir=path.resolve().parent)) | extra
    except SpecError as exc:
        raise MergeoptError(str(exc)) from None
