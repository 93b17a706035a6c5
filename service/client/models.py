"""What the client returns: the API's own response models (service/api/schemas.py, so client and
server cannot drift) plus typed views of the parts the API leaves as JSON objects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas import ExportOut, FrontOut, PoolOut, StudyOut, SuiteOut, TrialOut

__all__ = ["Event", "ExportOut", "FrontOut", "PoolOut", "StudyOut", "SuiteOut", "TrialOut", "Verdict", "TERMINAL"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})


class Verdict(BaseModel):
    """The study's answer, on validation documents (optimizer/verdict.py).

    ``recommended``: the trial to use, best on search documents of all trials, set-up included;
    ``pick``: the search's own best trial; ``search_paid``: did that beat the best set-up trial by
    more than noise (None until there is a search trial with validation scores)."""

    model_config = ConfigDict(extra="allow")

    recommended: int | None = None
    pick: int | None = None
    search_paid: bool | None = None
    text: str = ""
    comparisons: list[dict] = Field(default_factory=list)
    documents: dict[str, int] = Field(default_factory=dict)


class Event(BaseModel):
    """One server-sent event; ``id`` resumes a stream after it."""

    id: int
    type: str
    data: dict
