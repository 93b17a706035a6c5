"""Stored studies keep the search defaults they were created with.

Issue 18 changed the default parameterization (``search.weights`` None resolves to gated where
it was measured to help). A study stored before has no ``weights`` in its identity, i.e. box;
a spec that leaves ``weights`` unset resumes it as box instead of being refused as a different
study. A spec that sets ``weights`` explicitly is compared as given.
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
