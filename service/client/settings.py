"""What a client reads from its environment: MERGEOPT_SERVER, MERGEOPT_TOKEN, and MERGEOPT_TOKENS
(the server's own, on the server's machine). The environment only, no .env: a client's working
folder is not the server's."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERGEOPT_", extra="ignore")

    server: str = Field(default="", description="a running `mergeopt serve`; empty: none named")
    token: str = Field(default="", description="the bearer token sent")
    tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="the server's tokens: the first is sent when MERGEOPT_TOKEN is unset")

    @field_validator("server", "token", mode="after")
    @classmethod
    def _stripped(cls, v: str) -> str:
        return v.strip()

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, v):
        if isinstance(v, str):
            v = [t.strip() for t in v.split(",") if t.strip()]
        return v

    def bearer(self) -> str | None:
        """MERGEOPT_TOKEN; else the first of MERGEOPT_TOKENS; else none."""
        return self.token or (self.tokens[0] if self.tokens else None)
