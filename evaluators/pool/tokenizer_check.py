"""Every pool member must map tokens to the same ids: merged embedding rows are only meaningful
if row i means the same token in each checkpoint, and the merged model runs with the reference's
tokenizer. Compared whatever the format, as token -> id maps:

- tokenizer.json (fast tokenizers: the model's vocab, WordPiece/BPE/WordLevel maps or Unigram lists);
- tokenizer.model (sentencepiece: the pieces of its ModelProto, id = position);
- vocab.json (+ merges.txt: slow BPE) and vocab.txt (WordPiece: id = line);
plus added tokens (tokenizer.json's, added_tokens.json, tokenizer_config.json's
added_tokens_decoder). Members whose files are byte-identical are not parsed. Merge rules and
normalizers are not compared: they change how text splits into tokens, not what an id means.

A member without tokenizer files while another has them is an error (its ids cannot be checked;
copy the tokenizer of the model it was fine-tuned from into its folder). No member with one: there
is nothing to compare (`run` then refuses the reference for having no tokenizer)."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
EXTRA_FILES = ("merges.txt", "added_tokens.json", "tokenizer_config.json")
Reader = Callable[[Path], bytes]  # the pool's checked reader (fileguard)


class TokenizerMismatch(ValueError):
    """The message names the member; pool.py re-raises it as a PoolError."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated message")
        yield field, wire, value


def sentencepiece_pieces(raw: bytes) -> list[str]:
    """The pieces of a sentencepiece ModelProto (field 1, each a SentencePiece whose field 1 is
    the piece), in id order. A plain reader: no sentencepiece library, nothing executed."""
    pieces = []
    for field, wire, value in _fields(raw):
        if field == 1 and wire == 2:
            piece = [v for f, w, v in _fields(value) if f == 1 and w == 2]
            if len(piece) != 1:
                raise ValueError(f"piece {len(pieces)} has no text")
            pieces.append(piece[0].decode("utf-8"))
    if not pieces:
        raise ValueError("no pieces (not a sentencepiece model)")
    return pieces


def _from_tokenizer_json(raw: bytes) -> dict[str, int]:
    tok = json.loads(raw)
    vocab = (tok.get("model") or {}).get("vocab")
    if vocab is None:
        raise ValueError("no model.vocab")
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        vocab = {entry[0]: i for i, entry in enumerate(vocab)}
    out = {str(k): int(v) for k, v in vocab.items()}
    out.update({str(t["content"]): int(t["id"]) for t in tok.get("added_tokens") or []})
    return out


def _primary(name: str, raw: bytes) -> dict[str, int]:
    if name == "tokenizer.json":
        return _from_tokenizer_json(raw)
    if name == "tokenizer.model":
        return {p: i for i, p in enumerate(sentencepiece_pieces(raw))}
    if name == "vocab.json":
        return {str(k): int(v) for k, v in json.loads(raw).items()}
    return {line: i for i, line in enumerate(raw.decode("utf-8").splitlines())}  # vocab.txt


def _added(name: str, raw: bytes) -> dict[str, int]:
    if name == "added_tokens.json":
        return {str(k): int(v) for k, v in json.loads(raw).items()}
    if name == "tokenizer_config.json":
        decoder = json.loads(raw).get("added_tokens_decoder") or {}
        return {str(t["content"]): int(i) for i, t in decoder.items()}
    return {}


class Tokenizer:
    """One member's tokenizer files, read once through the pool's checked reader."""

    def __init__(self, who: str, folder: Path, read: Reader) -> None:
        self.who = who
        self.files = {n: read(folder / n) for n in (*VOCAB_FILES, *EXTRA_FILES) if (folder / n).is_file()}
        self.primary = next((n for n in VOCAB_FILES if n in self.files), None)
        self._vocab: dict[str, int] | None = None

    @property
    def key(self) -> tuple:
        return tuple((n, hashlib.sha256(self.files[n]).hexdigest()) for n in (*VOCAB_FILES, "added_tokens.json")
                     if n in self.files) + (self._config_added(),)

    def _config_added(self) -> str:
        raw = self.files.get("tokenizer_config.json")
        return json.dumps(self._parse("tokenizer_config.json", _added, raw), sort_keys=True) if raw else ""

    def _parse(self, name: str, fn, raw: bytes):
        try:
            return fn(name, raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, AttributeError, KeyError, IndexError,
                TypeError, ValueError, struct.error) as exc:
            raise TokenizerMismatch(f"{self.who}: unreadable {name}: {exc}") from exc

    def vocab(self) -> dict[str, int]:
        """token -> id (every format read, so a broken file is an error even when unused)."""
        if self._vocab is None:
            assert self.primary is not None
            out = self._parse(self.primary, _primary, self.files[self.primary])
            for name in VOCAB_FILES:
                if name in self.files and name != self.primary:
                    self._parse(name, _primary, self.files[name])
            for name in ("added_tokens.json", "tokenizer_config.json"):
                if name in self.files:
                    out.update(self._parse(name, _added, self.files[name]))
            self._vocab = out
        return self._vocab


def check_same_tokenizer(ref: Tokenizer, others: list[Tokenizer]) -> None:
    """Raises TokenizerMismatch naming the first member that differs from ``ref``."""
    everyone = [ref, *others]
    if all(t.primary is None for t in everyone):
        return
    for t in everyone:
        if t.primary is None:
            has = next(o for o in everyone if o.primary is not None)
            raise TokenizerMismatch(
                f"{t.who}: no tokenizer files ({', '.join(VOCAB_FILES)}) while {has.who} has "
                f"{has.primary}: its token ids cannot be checked (copy the tokenizer of the model it "
                "was fine-tuned from into its folder)")
    mine = ref.vocab()  # the reference is always read: the merged model runs with it
    for other in others:
        if other.key == ref.key:
            continue
        theirs = other.vocab()
        if theirs != mine:
            # Named by id, never by its text: the text is the file's content (a swapped-in
            # secret's first line would be echoed to the client).
            token = next(t for t in sorted(set(mine) | set(theirs)) if mine.get(t) != theirs.get(t))
            if token not in theirs:
                where = f"its vocabulary lacks the token with id {mine[token]} in {ref.who}"
            elif token not in mine:
                where = f"its token with id {theirs[token]} is not in {ref.who}"
            else:
                where = f"its token with id {theirs[token]} has id {mine[token]} in {ref.who}"
            raise TokenizerMismatch(
                f"{other.who}: tokenizer vocabulary differs from {ref.who} ({other.primary} vs "
                f"{ref.primary}): {where}")
