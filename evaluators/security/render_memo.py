"""Renders of client templates, made once in the bounded child (task_box.py) and replayed in
the worker. While a ``Recorder`` is active (in the child), every render of a template is stored
with its result or the kind of its error; while a ``Replay`` is active (in the worker, for one
study), a template is never rendered: its recorded result is returned (or its error raised),
and a render the child did not make fails closed. Text without '{' is not a template (Jinja
prints it as it is) and renders directly.

Keys are (template, document) hashed; the document by its repr, the same in both processes
when they built the same tasks from the same staged files."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from jinja2.exceptions import SecurityError, TemplateError, TemplateRuntimeError, UndefinedError

_active: ContextVar[Recorder | Replay | None] = ContextVar("mergeopt_render_memo", default=None)
ERRORS = {cls.__name__: cls for cls in (SecurityError, TemplateRuntimeError, TemplateError)}
# A render's error is stored as the study's error, which anyone who may read studies sees: it
# says what kind of failure it was and never quotes the document (Jinja's and Python's messages
# do: "'dict object' has no attribute '<the document's text>'", "invalid literal for int(): ...").
KINDS = {
    SecurityError: "a task template did something the sandbox refuses as unsafe",
    UndefinedError: "a task template used a name, key or attribute the document lacks",
}


class RendersTooLarge(MemoryError):
    pass


def key(template: str, doc: dict) -> bytes:
    return hashlib.blake2b(f"{template}\x00{doc!r}".encode("utf-8", "surrogatepass"), digest_size=20).digest()


def is_template(text: str) -> bool:
    return "{" in text


class Recorder:
    """Every render made while active: key -> ("ok", text) or (error class name, message)."""

    def __init__(self, max_bytes: int) -> None:
        self.renders: dict[bytes, tuple[str, str]] = {}
        self.max_bytes, self.bytes = max_bytes, 0

    def render(self, template: str, doc: dict, render: Callable[[str, dict], str]) -> str:
        k = key(template, doc)
        if k in self.renders:
            return replayed(self.renders[k])
        try:
            out = render(template, doc)
            entry = ("ok", out)
        except TemplateError as exc:
            entry = (type(exc).__name__, str(exc))
            self._keep(k, entry)
            raise
        self._keep(k, entry)
        return out

    def _keep(self, k: bytes, entry: tuple[str, str]) -> None:
        self.bytes += len(entry[1]) + len(k) + 64
        if self.bytes > self.max_bytes:
            raise RendersTooLarge(f"the rendered prompts exceed {self.max_bytes >> 20} MiB")
        self.renders[k] = entry


class Replay:
    def __init__(self, renders: dict[bytes, tuple[str, str]]) -> None:
        self.renders = renders

    def render(self, template: str, doc: dict, render: Callable[[str, dict], str]) -> str:
        entry = self.renders.get(key(template, doc))
        if entry is None:
            raise SecurityError("a task template was to be rendered outside the bounded task build (a document "
                                "or template that differs from the one built there)")
        return replayed(entry)


def replayed(entry: tuple[str, str]) -> str:
    kind, text = entry
    if kind == "ok":
        return text
    cls = next((c for c in KINDS if c.__name__ == kind), None) or ERRORS.get(kind, TemplateRuntimeError)
    raise cls(text)


def content_free(exc: Exception) -> TemplateError:
    """The same kind of Jinja error, with a message that quotes nothing rendered."""
    for kind, text in KINDS.items():
        if isinstance(exc, kind):
            return kind(text)
    if isinstance(exc, TemplateError):
        return type(exc)(f"a task template failed ({type(exc).__name__})")
    return TemplateRuntimeError(f"a task template failed ({type(exc).__name__})")


def active() -> Recorder | Replay | None:
    return _active.get()


@contextlib.contextmanager
def using(memo: Recorder | Replay | None) -> Iterator[None]:
    """``memo`` for the renders of this thread (None: render directly)."""
    token = _active.set(memo)
    try:
        yield
    finally:
        _active.reset(token)
