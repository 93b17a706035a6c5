"""What `mergeopt serve` requires before it listens, by where it listens.

- On a non-loopback address the API is reachable by others: it refuses to start unless the
  operator named MERGEOPT_ALLOWED_ROOTS (the default, the working directory, is for local use:
  it holds the service's own files and whatever else happens to be there).
- On loopback with no MERGEOPT_ALLOWED_HOSTS, only the loopback names are served: a web page
  that rebinds its own DNS name to 127.0.0.1 sends its name as Host and gets 400, so it cannot
  read a local API whose reads are open."""

from __future__ import annotations

import ipaddress

from service.settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class ServeRefused(SystemExit):
    """`serve` will not start as configured; the message says what to set."""


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def check_serve(settings: Settings) -> Settings:
    """``settings`` as `serve` runs them, or ServeRefused."""
    loopback = is_loopback(settings.host)
    if not loopback and "allowed_roots" not in settings.model_fields_set:
        raise ServeRefused(
            f"mergeopt serve: refusing to listen on {settings.host}, which is not a loopback address, without "
            "MERGEOPT_ALLOWED_ROOTS: name the folders that hold your models, task files and exports "
            "(comma-separated), e.g. MERGEOPT_ALLOWED_ROOTS=/models,/tasks,/exports")
    if loopback and not settings.allowed_hosts:
        settings.allowed_hosts = sorted({*LOOPBACK_NAMES, settings.host.strip("[]").lower()})
    return settings
