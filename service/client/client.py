"""A typed client for a running `mergeopt serve` (httpx, synchronous).

    from service.client import Client
    with Client("http://127.0.0.1:8000") as c:      # token: MERGEOPT_TOKEN
        study = c.create_study("study.yaml")
        c.wait(study.name, on_event=print)
        v = c.verdict(study.name)
        c.export(study.name, v.recommended, "merged/")

429 and 503 are retried after the server's Retry-After (else an exponential back-off), a refused
connection likewise; every other error status raises the ApiError subclass for it with the
server's reason."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from service.client import errors as E
from service.client.export_files import unpack_into
from service.client.models import (
    TERMINAL,
    Event,
    ExportOut,
    FrontOut,
    PoolOut,
    StudyOut,
    SuiteOut,
    TrialOut,
    Verdict,
)
from service.client.settings import DEFAULT_SERVER, ClientSettings
from service.client.sse import parse_events
from service.client.study_body import study_body

RETRIED = {429, 503}
# Keep-alives come every 15 s on an idle event stream (service/api/event_hub.py): a read waiting
# longer than this means the connection is gone.
STREAM_READ_S = 60.0
EXPORT_S = 3600.0  # a download is merged on the server's CPU first: minutes for a big pool


def token_from_env() -> str | None:
    """MERGEOPT_TOKEN; else the first of the server's own MERGEOPT_TOKENS (same machine)."""
    return ClientSettings().bearer()


def server_from_env() -> str:
    return ClientSettings().server or DEFAULT_SERVER


def _reason(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, list):  # request validation errors: where and why
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}" for d in detail)
    return str(detail)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, *, timeout: float = 60.0,
                 retries: int = 5, max_wait_s: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:
        self.server = (server or server_from_env()).rstrip("/")
        self.token = token if token is not None else token_from_env()
        self.retries, self.max_wait_s = retries, max_wait_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)
        self.last_event_id: dict[str, int] = {}  # per study: where wait()/events() resume

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _backoff(self, attempt: int, hint: float | None = None) -> None:
        delay = hint if hint is not None else min(self.max_wait_s, 0.5 * 2**attempt) * (0.5 + random.random() / 2)
        time.sleep(min(delay, self.max_wait_s))

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs) -> httpx.Response:
        """The response of a request, retried on 429/503 and refused connections; raises on errors."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self._http.build_request(method, path, **kwargs)
                response = self._http.send(request, stream=stream)
            except httpx.ConnectError as exc:  # nothing was sent: safe to retry any method
                if last:
                    raise E.ServerUnreachable(f"cannot reach {self.server}: {exc}") from None
                self._backoff(attempt)
                continue
            except httpx.TransportError as exc:  # perhaps sent: a POST is not repeated
                if last or method != "GET":
                    raise E.ServerUnreachable(f"{method} {path} on {self.server}: {type(exc).__name__}: {exc}") from None
                self._backoff(attempt)
                continue
            if response.status_code < 400:
                return response
            if stream:
                response.read()
                response.close()
            if response.status_code in RETRIED and not last:
                self._backoff(attempt, _retry_after(response))
                continue
            raise E.error_for(response.status_code, _reason(response), _retry_after(response))
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs):
        return self._send(method, path, **kwargs).json()

    # ------------------------------------------------------------------ pools and suites
    def register_pool(self, name: str, pool: dict) -> PoolOut:
        """``pool`` as in the study spec: {base, checkpoints: [{name, path}], ...} (server paths)."""
        return PoolOut.model_validate(self._json("POST", "/v1/pools", json={"name": name, **pool}))

    def register_suite(self, name: str, suite: dict) -> SuiteOut:
        """``suite`` as in the study spec: {include_path, tasks: [{task, metric, split, ...}], limit, ...}."""
        return SuiteOut.model_validate(self._json("POST", "/v1/suites", json={"name": name, **suite}))

    def pools(self) -> list[PoolOut]:
        return [PoolOut.model_validate(p) for p in self._json("GET", "/v1/pools")]

    def suites(self) -> list[SuiteOut]:
        return [SuiteOut.model_validate(s) for s in self._json("GET", "/v1/suites")]

    # ------------------------------------------------------------------ studies
    def create_study(self, study, *, priority: int | None = None) -> StudyOut:
        """``study``: a study YAML path (relative paths resolved from its folder, as `mergeopt run`
        does), a dict (the POST /v1/studies body: pool/suite inline or pool_id/suite_id) or a StudySpec."""
        body = study_body(study)
        if priority is not None:
            body["priority"] = priority
        return StudyOut.model_validate(self._json("POST", "/v1/studies", json=body))

    def study(self, key: str) -> StudyOut:
        return StudyOut.model_validate(self._json("GET", f"/v1/studies/{key}"))

    def studies(self, state: str | None = None) -> list[StudyOut]:
        params = {"state": state} if state else None
        return [StudyOut.model_validate(s) for s in self._json("GET", "/v1/studies", params=params)]

    def pause(self, key: str) -> StudyOut:
        return StudyOut.model_validate(self._json("POST", f"/v1/studies/{key}/pause"))

    def resume(self, key: str) -> StudyOut:
        return StudyOut.model_validate(self._json("POST", f"/v1/studies/{key}/resume"))

    def cancel(self, key: str) -> StudyOut:
        return StudyOut.model_validate(self._json("POST", f"/v1/studies/{key}/cancel"))

    # ------------------------------------------------------------------ results
    def trials(self, key: str, state: str | None = None) -> list[TrialOut]:
        params = {"state": state} if state else None
        return [TrialOut.model_validate(t) for t in self._json("GET", f"/v1/studies/{key}/trials", params=params)]

    def trial(self, key: str, number: int) -> TrialOut:
        return TrialOut.model_validate(self._json("GET", f"/v1/studies/{key}/trials/{number}"))

    def front(self, key: str, split: str = "validation") -> FrontOut:
        """The Pareto front on validation documents with intervals and the verdict (default), or on
        the search documents (optimistic: for diagnosis)."""
        return FrontOut.model_validate(self._json("GET", f"/v1/studies/{key}/front", params={"split": split}))

    def verdict(self, key: str) -> Verdict | None:
        """None while the study has no validation documents or nothing scored yet."""
        v = self.front(key).verdict
        return None if v is None else Verdict.model_validate(v)

    def recommended_trial(self, key: str) -> TrialOut | None:
        """The trial to use (best on search documents of all trials, set-up included), with its
        validation scores; None before any trial completed."""
        v = self.verdict(key)
        if v is not None and v.recommended is not None:
            return self.trial(key, v.recommended)
        done = [t for t in self.trials(key, "complete") if t.objective is not None]
        return max(done, key=lambda t: t.objective, default=None)  # a study without validation documents

    # ------------------------------------------------------------------ events and waiting
    def _stream(self, key: str, after: int, follow: bool) -> Iterator[Event | None]:
        """Events after ``after``, None for each keep-alive; reconnects from the last id seen when
        the connection drops, up to ``retries`` times in a row."""
        failures = 0
        while True:
            timeout = httpx.Timeout(self._http.timeout.connect, read=STREAM_READ_S)
            response = self._send("GET", f"/v1/studies/{key}/events", stream=True, timeout=timeout,
                                  params={"follow": str(follow).lower()}, headers={"Last-Event-ID": str(after)})
            try:
                for event in parse_events(response.iter_lines()):
                    if event is not None:
                        self.last_event_id[key] = after = event.id
                        failures = 0
                    yield event
                return
            except httpx.TransportError:
                failures += 1
                if failures > self.retries:
                    raise E.ServerUnreachable(f"event stream of '{key}' on {self.server} keeps dropping") from None
                self._backoff(failures - 1)
            finally:
                response.close()

    def events(self, key: str, after: int | None = None, follow: bool = True) -> Iterator[Event]:
        """The study's events (trial_started, trial_finished, trial_failed, trial_validated,
        front_changed, state) after the id ``after`` (default: where this client last stopped);
        with follow, until the study has finished."""
        stream = self._stream(key, self.last_event_id.get(key, 0) if after is None else after, follow)
        try:
            for event in stream:
                if event is not None:
                    yield event
        finally:  # a caller that stops early closes the connection at once
            stream.close()

    def wait(self, key: str, *, timeout: float | None = None, on_event: Callable[[Event], None] | None = None,
             poll_s: float | None = None, raise_on_failure: bool = True) -> StudyOut:
        """Block until the study is completed, failed or cancelled; its final state.

        Follows the event stream (resumed from the last id after a dropped connection), or polls
        with back-off when ``poll_s`` is given or the server refuses another stream. Raises
        StudyFailed for a failed or cancelled study (unless ``raise_on_failure`` is False) and
        TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if poll_s is None:
            try:
                for event in self._stream(key, self.last_event_id.get(key, 0), follow=True):
                    if event is not None and on_event is not None:
                        on_event(event)
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"study '{key}' still running after {timeout} s")
            except E.Busy:
                poll_s = 1.0  # too many streams open: poll instead
        study = self.study(key)
        delay = poll_s or 1.0
        while study.state not in TERMINAL:  # polling (or a stream that ended early)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise TimeoutError(f"study '{key}' still {study.state} after {timeout} s")
            time.sleep(delay)
            before, study = study.progress, self.study(key)
            delay = (poll_s or 1.0) if study.progress != before else min(delay * 1.5, 15.0)
        if raise_on_failure and study.state != "completed":
            raise E.StudyFailed(study)
        return study

    # ------------------------------------------------------------------ export
    def export(self, key: str, trial: int, out_dir: str | Path) -> Path:
        """Download the trial's merge (HF checkpoint + mergekit_config.yml) into ``out_dir`` on
        this machine (created; must be empty if it exists)."""
        out = Path(out_dir)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise E.MergeoptError(f"{out} exists and is not an empty folder")
        timeout = httpx.Timeout(self._http.timeout.connect, read=EXPORT_S)
        response = self._send("GET", f"/v1/studies/{key}/trials/{trial}/export", stream=True, timeout=timeout)
        try:
            return unpack_into(response.iter_bytes(), out)
        finally:
            response.close()

    def export_on_server(self, key: str, trial: int, out_dir: str) -> ExportOut:
        """Write the trial's merge to a folder on the server (under its allowed roots)."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=EXPORT_S)
        return ExportOut.model_validate(self._json("POST", f"/v1/studies/{key}/trials/{trial}/export",
                                                   json={"out_dir": str(out_dir)}, timeout=timeout))
