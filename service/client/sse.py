"""Server-sent events parsing (the subset the API sends: id, event, data, comments)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from service.client.models import Event


def parse_events(lines: Iterable[str]) -> Iterator[Event | None]:
    """Each complete event, and None for each comment (the server's keep-alive), so a reader
    blocked on a quiet stream still gets control back every 15 s."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields and "id" in fields:
                yield Event(id=int(fields["id"]), type=fields["event"], data=json.loads(fields.get("data", "{}")))
            fields = {}
        elif line.startswith(":"):
            yield None
        else:
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")
