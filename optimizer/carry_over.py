"""A resumed study keeps the parameterization it was created with.

A spec that leaves ``search.weights`` unset resumes a stored study with the study's own (its
identity has ``weights`` only when not box), instead of being refused as a different study; a
spec that sets it explicitly is compared as given. Readers (front, export, the service's
adoption of CLI studies) see the same spec through ``stored_spec``.
"""

from __future__ import annotations

from optimizer.records import A_IDENTITY, A_SPEC
from optimizer.spec import StudySpec, parse_spec


def carried_over(spec: StudySpec, identity: dict | None) -> StudySpec:
    """``spec`` with the stored study's parameterization where ``spec`` leaves it to the default."""
    if identity is None or spec.search.weights is not None:
        return spec
    search = spec.search.model_copy(update={"weights": identity.get("weights", "box")})
    return spec.model_copy(update={"search": search})


def stored_spec(attrs: dict) -> StudySpec:
    """The spec a stored study runs with (its user attributes hold spec and identity)."""
    return carried_over(parse_spec(attrs[A_SPEC]), attrs.get(A_IDENTITY))
