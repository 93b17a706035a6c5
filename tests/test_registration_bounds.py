"""Registration bounds (issue 20, findings 6 and 10b): what a pool's files make the API process
do is bounded before anything is built. Each attack through POST /v1/pools, timed."""

from __future__ import annotations

import json
import shutil
import struct
import time
import uuid
from pathlib import Path

import pytest
from servicekit import AUTH

from evaluators.pool import bounds as pool_bounds


def member_copy(env, i: int = 1) -> Path:
    dst = env["root"] / "bounds" / uuid.uuid4().hex[:8]
    shutil.copytree(env["a"]["pool"]["checkpoints"][i]["path"], dst)
    return dst


def register(env, base: str | None = None, extra: list[dict] = ()) -> tuple[int, str, float]:
    p = env["a"]["pool"]
    body = {"name": f"p-{uuid.uuid4().hex[:6]}", "base": base or p["base"], "checkpoints": [*p["checkpoints"][:2], *extra]}
    t0 = time.perf_counter()
    r = env["c"].post("/v1/pools", json=body, headers=AUTH)
    return r.status_code, r.text, time.perf_counter() - t0


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_config_module_counts_beyond_the_tensors_are_refused_before_building(env):
    """num_hidden_layers: 20000 in the reference's config.json made transformers build 20000
    layers on the meta device (16.7 s, +756 MB) before anything said no."""
    base = member_copy(env)
    edit_config(base, num_hidden_layers=20000)
    status, text, took = register(env, base=str(base))
    assert status == 422 and "num_hidden_layers is 20000" in text and took < 2.0, (status, text, took)
    nested = member_copy(env)
    edit_config(nested, text_config={"num_local_experts": 4096})
    status, text, _ = register(env, base=str(nested))
    assert status == 422 and "num_local_experts is 4096" in text, text


def header_file(folder: Path, pad: int) -> None:
    """model.safetensors with its header padded by ``pad`` bytes of metadata (a valid file)."""
    raw = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = {"pad": "x" * pad}
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_large_safetensors_headers_are_refused_before_they_are_read(env, monkeypatch):
    big = member_copy(env)
    header_file(big, pad=17 << 20)  # the old cap was safetensors' own, 100 MB
    status, text, took = register(env, extra=[{"name": "big", "path": str(big)}])
    assert status == 422 and "safetensors header is" in text and took < 2.0, (status, text, took)
    # The pool's headers in all: five 1 MiB headers against a 4 MiB budget.
    monkeypatch.setattr(pool_bounds, "MAX_POOL_HEADER_BYTES", 4 << 20)
    extra = []
    for i in range(5):
        folder = member_copy(env)
        header_file(folder, pad=1 << 20)
        extra.append({"name": f"m{i}", "path": str(folder)})
    status, text, _ = register(env, extra=extra)
    assert status == 422 and "headers exceed" in text, text


def test_one_folder_through_a_link_is_not_a_second_checkpoint(env):
    """"No path twice" compared the paths as written: a link to a registered checkpoint passed
    it (and multiplied the cost of every check)."""
    alias = env["root"] / "bounds" / f"alias-{uuid.uuid4().hex[:6]}"
    alias.parent.mkdir(exist_ok=True)
    first = env["a"]["pool"]["checkpoints"][0]
    alias.symlink_to(first["path"])
    status, text, _ = register(env, extra=[{"name": "alias", "path": str(alias)}])
    assert status == 422 and "same folder" in text and first["name"] in text, text


@pytest.mark.parametrize("value", ["kernels-community/flash-attn", "../../evil", 3])
def test_attn_implementation_names_only_shipped_implementations(env, value):
    """A client config.json could name a Hub kernel (only offline mode stopped the download)."""
    folder = member_copy(env)
    edit_config(folder, attn_implementation=value)
    status, text, _ = register(env, extra=[{"name": "attn", "path": str(folder)}])
    assert status == 422 and "attn_implementation must be one of" in text, text
    ok = member_copy(env)
    edit_config(ok, attn_implementation="sdpa")
    assert register(env, extra=[{"name": "sdpa", "path": str(ok)}])[0] == 201
