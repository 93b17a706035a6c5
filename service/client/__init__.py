"""Python client for a running `mergeopt serve`: see client.py."""

from service.client.client import Client, server_from_env, token_from_env
from service.client.errors import (
    ApiError,
    Busy,
    Conflict,
    Invalid,
    MergeoptError,
    NotFound,
    Refused,
    ServerFailed,
    ServerUnreachable,
    StudyFailed,
    Unauthorized,
)
from service.client.models import Event, Verdict

__all__ = ["ApiError", "Busy", "Client", "Conflict", "Event", "Invalid", "MergeoptError", "NotFound", "Refused",
           "ServerFailed", "ServerUnreachable", "StudyFailed", "Unauthorized", "Verdict", "server_from_env",
           "token_from_env"]
