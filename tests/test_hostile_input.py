"""Hostile input through the REST API: every request here must get a 4xx with a reason (never a
5xx) and leave what is stored exactly as it was.

Covers symlink and path escapes out of the allowed roots, corrupt or mismatched checkpoint
files (headers, configs, shard indexes, shapes, dtypes, tokenizers), huge and invalid JSON,
unknown lm-eval tasks, and a bounded schemathesis run over the OpenAPI schema. The basic 4xx
cases (``..``, a symlinked base folder, bad spec fields) are in test_api.py."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from servicekit import AUTH, stored

from service.worker.runtime import Worker

JSON = {**AUTH, "Content-Type": "application/json"}


def good_ckpt(env, i: int = 1) -> Path:
    return Path(env["a"]["pool"]["checkpoints"][i]["path"])


def pool_with(env, folder: Path, name: str | None = None) -> dict:
    """The good pool with checkpoint 'bad' = ``folder`` added (named: a POST /v1/pools body)."""
    p = env["a"]["pool"]
    body = {"base": p["base"], "checkpoints": [*p["checkpoints"][:2], {"name": "bad", "path": str(folder)}]}
    return {"name": name, **body} if name else body


def copy_ckpt(env, tag: str) -> Path:
    dst = env["root"] / "bad" / tag
    shutil.copytree(good_ckpt(env), dst)
    return dst


def set_header(folder: Path, raw: bytes, data: bytes = b"") -> None:
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_json(file: Path, edit) -> None:
    obj = json.loads(file.read_text())
    edit(obj)
    file.write_text(json.dumps(obj))


def retensor(folder: Path, edit) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def shard_to(folder: Path, target: str) -> None:
    """A shard index whose every tensor lives in ``target`` (a path the index should never name)."""
    names = list(load_file(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(names, target)}))


def reversed_vocab(tj: dict) -> None:
    vocab = tj["model"]["vocab"]
    tj["model"]["vocab"] = dict(zip(vocab, reversed(list(vocab.values())), strict=True))


Q = "model.layers.0.self_attn.q_proj.weight"
# tag -> (how the copy of a good checkpoint is broken, words the 422's reason must contain)
CORRUPT = {
    "header-too-long": (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}"), ["corrupt safetensors header"]),
    "header-not-json": (lambda d: set_header(d, b"\x00garbage{"), ["cannot read model.safetensors"]),
    "header-deeply-nested": (lambda d: set_header(d, b"[" * 200_000), ["cannot read model.safetensors"]),
    "header-a-list": (lambda d: set_header(d, b"[1, 2]"), ["corrupt safetensors header"]),
    "header-entry-not-object": (lambda d: set_header(d, json.dumps({"a": [1, 2]}).encode()), ["corrupt header entry", "'a'"]),
    "header-offsets-past-end": (lambda d: set_header(d, json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode(), b"\0" * 4), ["points outside the file"]),
    "header-negative-shape": (lambda d: set_header(d, json.dumps({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}).encode(), b"\0" * 4), ["points outside the file"]),
    "empty-file": (lambda d: (d / "model.safetensors").write_bytes(b""), ["too short"]),
    "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]), ["truncated"]),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), ["no .safetensors files"]),
    "config-missing": (lambda d: (d / "config.json").unlink(), ["no config.json"]),
    "config-deeply-nested": (lambda d: (d / "config.json").write_text("[" * 200_000), ["unreadable config.json"]),
    "config-a-list": (lambda d: (d / "config.json").write_text("[]"), ["config.json is not a JSON object"]),
    "config-architectures-int": (lambda d: edit_json(d / "config.json", lambda c: c.update(architectures=5)), ["'architectures'"]),
    "other-architecture": (lambda d: edit_json(d / "config.json", lambda c: c.update(architectures=["GPT2LMHeadModel"])), ["architecture"]),
    "index-weight-map-a-list": (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": []}'), ["weight_map"]),
    "index-weight-map-ints": (lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": 5}}'), ["names shard"]),
    "index-deeply-nested": (lambda d: (d / "model.safetensors.index.json").write_text("[" * 200_000), ["unreadable model.safetensors.index.json"]),
    "wrong-shape": (lambda d: retensor(d, lambda t: t.update({Q: t[Q][:-1]})), ["has shape", Q]),
    "wrong-dtype": (lambda d: retensor(d, lambda t: t.update({Q: t[Q].to(torch.float16)})), ["has dtype F16", Q]),
    "missing-tensor": (lambda d: retensor(d, lambda t: t.pop(Q)), ["missing tensor", Q]),
    "extra-tensor": (lambda d: retensor(d, lambda t: t.update(extra=torch.zeros(2))), ["unexpected tensor 'extra'"]),
    "tokenizer-other-vocab": (lambda d: edit_json(d / "tokenizer.json", reversed_vocab), ["tokenizer vocabulary differs"]),
    "tokenizer-unreadable": (lambda d: (d / "tokenizer.json").write_text("{"), ["unreadable tokenizer.json"]),
}


def test_corrupt_and_mismatched_checkpoints_are_422(env):
    c = env["c"]
    before = stored(c)
    for tag, (breaks, words) in CORRUPT.items():
        folder = copy_ckpt(env, tag)
        breaks(folder)
        r = c.post("/v1/pools", json=pool_with(env, folder, f"p-{tag}"), headers=AUTH)
        assert r.status_code == 422, (tag, r.status_code, r.text)
        detail = r.json()["detail"]
        assert "'bad'" in detail and all(w in detail for w in words), (tag, detail)
        # The same pool inline in a study: refused the same way, before Optuna or our tables see it.
        body = {"name": f"s-{tag}", "pool": pool_with(env, folder), "suite": env["a"]["suite"]}
        r = c.post("/v1/studies", json=body, headers=AUTH)
        assert r.status_code == 422 and "'bad'" in r.json()["detail"], (tag, r.text)
    assert stored(c) == before


def test_escapes_out_of_the_allowed_roots_are_refused(env):
    c, root, outside = env["c"], env["root"], env["outside"]
    before = stored(c)
    # Real checkpoint material outside the roots, reached from inside them.
    away = outside / "ckpt"
    shutil.copytree(good_ckpt(env), away)
    cases = []
    for fname in ("model.safetensors", "config.json", "tokenizer.json"):
        folder = copy_ckpt(env, f"link-{fname}")
        (folder / fname).unlink()
        (folder / fname).symlink_to(away / fname)
        cases.append((f"symlinked {fname}", folder, 403, "resolves to"))
    folder = root / "bad" / "link-folder"
    folder.symlink_to(away, target_is_directory=True)
    cases.append(("symlinked checkpoint folder", folder, 403, "resolves to"))
    folder = copy_ckpt(env, "index-absolute")
    shard_to(folder, str(away / "model.safetensors"))
    cases.append(("shard index naming an absolute path", folder, 422, "not a file name"))
    folder = copy_ckpt(env, "index-dotdot")
    shard_to(folder, "../../../" + str(away.relative_to(away.anchor)) + "/model.safetensors")
    cases.append(("shard index naming ../", folder, 422, "not a file name"))
    folder = copy_ckpt(env, "index-subdir")
    shard_to(folder, "sub/model.safetensors")
    cases.append(("shard index naming a sub-folder", folder, 422, "not a file name"))
    cases.append(("relative path", Path("bad/x"), 403, "must be absolute"))
    for what, folder, status, reason in cases:
        r = c.post("/v1/pools", json=pool_with(env, folder, "esc"), headers=AUTH)
        assert r.status_code == status and reason in r.json()["detail"], (what, r.text)

    # Task folders: a data file or the folder itself leading outside.
    tasks = Path(env["a"]["suite"]["include_path"])
    linked = root / "tasks-linked"
    shutil.copytree(tasks, linked)
    (outside / "secret.jsonl").write_text('{"q": "1+1=", "choices": ["2"], "label": 0}\n')
    (linked / "tiny_add.jsonl").unlink()
    (linked / "tiny_add.jsonl").symlink_to(outside / "secret.jsonl")
    (root / "tasks-away").symlink_to(outside, target_is_directory=True)
    for include in (linked, root / "tasks-away", outside):
        r = c.post("/v1/suites", json={"name": "esc", **env["a"]["suite"], "include_path": str(include)}, headers=AUTH)
        assert r.status_code == 403 and "outside the allowed roots" in r.json()["detail"], (include, r.text)
    # Task YAMLs inside the roots that make lm-eval read outside them: data_files (absolute, or
    # relative with ..), a local dataset_path, an include of another YAML.
    escapes = {
        "absolute data file": f"dataset_kwargs:\n  data_files:\n    test: {outside / 'secret.jsonl'}\n",
        "data file list": f"dataset_kwargs:\n  data_files:\n    test: [{tasks / 'tiny_add.jsonl'}, {outside / 'secret.jsonl'}]\n",
        "relative ..": f"dataset_kwargs:\n  data_files:\n    test: ../../{outside.name}/secret.jsonl\n",
        "local dataset_path": f"dataset_path: {outside}\n",
        "include": f"include: {outside / 'other.yaml'}\n",
    }
    for what, line in escapes.items():
        folder = root / f"tasks-{what.replace(' ', '-')}"
        shutil.copytree(tasks, folder)
        yml = folder / "tiny_add.yaml"
        text = yml.read_text()
        if "dataset_kwargs" in line:  # replace the task's own data files
            text = text[: text.index("dataset_kwargs")]
        yml.write_text(text + line + "process_docs: !function utils.process_docs\n")
        r = c.post("/v1/suites", json={"name": "esc", **env["a"]["suite"], "include_path": str(folder)}, headers=AUTH)
        assert r.status_code == 403 and "tiny_add.yaml" in r.json()["detail"], (what, r.text)
        assert "outside the allowed roots" in r.json()["detail"], (what, r.text)

    # Export targets: a symlinked folder, a new folder under it, a dangling link to a new folder.
    (root / "out-link").symlink_to(outside, target_is_directory=True)
    (root / "out-dangling").symlink_to(outside / "created-by-export")
    for out in (root / "out-link", root / "out-link" / "new", root / "out-dangling", Path("/"), Path("relative/out")):
        r = c.post("/v1/studies/kept/trials/0/export", json={"out_dir": str(out)}, headers=AUTH)
        assert r.status_code == 403, (out, r.text)
    assert not (outside / "created-by-export").exists() and not (outside / "new").exists()
    assert stored(c) == before


def test_huge_and_invalid_json_bodies(env):
    c, root = env["c"], env["root"]
    before = stored(c)
    # Over the 1 MiB body cap (MERGEOPT_MAX_BODY_BYTES): refused before it is read or parsed,
    # with or without a Content-Length.
    many = [{"name": f"c{i}", "path": str(root / "nope" / f"c{i:07d}-{'x' * 40}")} for i in range(200_000)]
    body = json.dumps({"name": "huge", "base": None, "checkpoints": many}).encode()
    assert len(body) > 18e6
    t0 = time.perf_counter()
    r = c.post("/v1/pools", content=body, headers=JSON)
    assert r.status_code == 413 and "Too Large" in r.text and time.perf_counter() - t0 < 10
    r = c.post("/v1/pools", content=(b"x" * 100_000 for _ in range(20)), headers=JSON)  # chunked
    assert r.status_code == 413 and "Too Large" in r.text
    # Just under the cap: ~8k checkpoints (none exists) is a 422, past the pool's checkpoint cap (128).
    # (Before the cap, 200k of them cost 10 minutes of CPU in quadratic name checks, since fixed.)
    many = [{"name": f"c{i}", "path": str(root / "nope" / f"c{i:06d}-{'x' * 40}")} for i in range(8_000)]
    body = json.dumps({"name": "many", "base": None, "checkpoints": many}).encode()
    assert 0.5e6 < len(body) < 1 << 20
    t0 = time.perf_counter()
    r = c.post("/v1/pools", content=body, headers=JSON)
    assert r.status_code == 422 and "at most 128 items" in json.dumps(r.json()["detail"]), r.text[:300]
    assert time.perf_counter() - t0 < 30
    r = c.post("/v1/pools", json={"name": "many", "base": None, "checkpoints": many[:128]}, headers=AUTH)
    assert r.status_code == 422 and "does not exist" in r.json()["detail"], r.text[:300]  # at the cap: the files
    # A long string under the cap: refused, and not echoed back.
    r = c.post("/v1/pools", content=json.dumps({"name": "x" * 1_000_000}).encode(), headers=JSON)
    assert r.status_code == 422 and len(r.content) < 10_000
    a = env["a"]
    pool, suite = json.dumps(a["pool"]), json.dumps(a["suite"])
    heavy_task = suite.replace('"task": "tiny_add"', '"task": "tiny_add", "weight": Infinity')
    bodies = [
        b"{not json", b'{"name": "a",', b"", b"null", b"[]", b'"a string"', b"42", b"\xff\xfe\x00\x01",
        b"[" * 200_000 + b"]" * 200_000, b'{"name": ' + b"{" * 100_000,
        b'{"name": NaN}', b'{"name": Infinity, "pool": {}}', b'{"name": "a", "priority": NaN}',
        # Non-finite numbers in fields that would otherwise accept a float:
        f'{{"name": "n1", "pool": {pool}, "suite": {suite}, "search": {{"weight_range": [0, Infinity]}}}}'.encode(),
        f'{{"name": "n2", "pool": {pool}, "suite": {suite}, "search": {{"lambda_range": [-Infinity, 1]}}}}'.encode(),
        f'{{"name": "n3", "pool": {pool}, "suite": {suite}, "search": {{"sigma0": NaN}}}}'.encode(),
        f'{{"name": "n5", "pool": {pool}, "suite": {suite[:-1]}, "limit": Infinity}}}}'.encode(),
        f'{{"name": "n6", "pool": {pool}, "suite": {heavy_task}}}'.encode(),
        f'{{"name": "n7", "pool": {pool}, "suite": {suite}, "priority": 1e400}}'.encode(),
    ]
    for raw in bodies:
        r = c.post("/v1/studies", content=raw, headers=JSON)
        assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:300])
        r.json()  # always a JSON reason
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = c.post("/v1/pools", content=b"name=x", headers={**AUTH, "Content-Type": ctype})
        assert 400 <= r.status_code < 500, (ctype, r.text)
    assert stored(c) == before


def test_unknown_tasks_and_bad_suites_are_422(env):
    c, root = env["c"], env["root"]
    before = stored(c)
    include = env["a"]["suite"]["include_path"]
    (root / "tasks-broken").mkdir()
    (root / "tasks-broken" / "broken.yaml").write_text("task: [unclosed\n")
    cases = [
        ({"include_path": include, "tasks": [{"task": "no_such_task"}]}, "unknown lm-eval task 'no_such_task'"),
        ({"include_path": include, "tasks": [{"task": "tiny_add"}, {"task": "tiny_add"}]}, "listed twice"),
        ({"include_path": include, "tasks": []}, "at least 1"),
        ({"include_path": str(Path(include) / "tiny_add.yaml"), "tasks": [{"task": "tiny_add"}]}, "not a directory"),
        ({"include_path": str(root / "tasks-broken"), "tasks": [{"task": "broken"}]}, "unknown lm-eval task 'broken'"),
        ({"include_path": include, "tasks": [{"task": "tiny_add", "split": "sideways"}]}, "split"),
        ({"tasks": [{"task": "tiny_add"}]}, "unknown lm-eval task 'tiny_add'"),  # lm-eval's built-in tasks only
    ]
    for suite, reason in cases:
        r = c.post("/v1/suites", json={"name": "bad-suite", **suite}, headers=AUTH)
        assert r.status_code == 422 and reason in json.dumps(r.json()["detail"]), (suite, r.text)
        if "include_path" in suite:  # (the built-in index takes seconds: once is enough)
            r = c.post("/v1/studies", json={"name": "bad-study", "pool_id": "good", "suite": suite}, headers=AUTH)
            assert r.status_code == 422 and reason in json.dumps(r.json()["detail"]), (suite, r.text)
    assert stored(c) == before


def test_non_finite_weights_fail_the_study_with_a_reason(env, tmp_path):
    """NaN/Inf values are checked when a worker loads the pool (reading every tensor of a large
    pool inside a request is not an option): registration passes the header checks, the study
    fails at load naming the checkpoint and tensor, no trial runs, the other studies go on."""
    c = env["c"]
    folder = copy_ckpt(env, "nan-values")
    retensor(folder, lambda t: t[Q].__setitem__((0, 0), float("nan")))
    r = c.post("/v1/studies", json={"name": "nan-study", "pool": pool_with(env, folder), "suite": env["a"]["suite"], "priority": 9,
                                    "search": {"n_trials": 12}}, headers=AUTH)
    assert r.status_code == 201, r.text
    worker = Worker(env["settings"], worker_id="nan-worker")
    assert worker.run_once()  # picks the high-priority study, fails it at load
    study = c.get("/v1/studies/nan-study").json()
    assert study["state"] == "failed", study
    assert f"checkpoint 'bad': tensor '{Q}' contains NaN or Inf values" in study["error"]
    assert study["progress"] == {"completed": 0, "running": 0, "failed": 0, "budget": 12}
    assert c.get("/v1/studies/kept").json()["state"] == "queued"  # untouched by the failure
