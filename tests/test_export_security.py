"""Issue 11, findings 3, 5 and 8, each attack reproduced and refused: pool files are checked where
they are opened, not only where registered (a link to a secret planted in the base after
registration, or while the export runs, never reaches the tarball); the export target is
written through descriptors into a fresh folder and renamed into place (out_dir swapped for a
link between the check and the write: nothing written outside the roots); downloads are capped
(429 with a reason), need a token when reads are protected, and merge on the API's CPU.
The API tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import scratch_pg_database
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file
from servicekit import AUTH, make_assets, settings_for

from evaluators.merging import export
from evaluators.pool.validation import PoolFileRefused, load_checkpoint_tensors, validate_pool
from optimizer.spec import parse_spec
from service.api.app import create_app
from service.api.routes import exports as routes
from service.cli.main import main
from service.db.models import Study
from service.db.session import session_factory
from service.studies import runs as studies
from service.studies.paths import PathNotAllowed, guard_path
from service.worker.runtime import Worker

from tinypool import make_pool

SECRET = "MERGEOPT_TOKENS=s3cret-do-not-leak"
DOWNLOAD = "/v1/studies/ex/trials/0/export"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def svc(request, tmp_path_factory):
    """A study with completed trials (one worker step: references, ~2 s), served with open reads."""
    root = tmp_path_factory.mktemp("exsec")
    outside = tmp_path_factory.mktemp("exsec-outside")
    secret = outside / "secret.env"
    secret.write_text(SECRET)
    assets = make_assets(root)
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{root}/db.sqlite" if request.param == "sqlite"
               else stack.enter_context(scratch_pg_database("exsec")))
        # No per-client rate here: the module downloads more than a client may per minute;
        # test_concurrent_exports_beyond_the_cap_get_429 checks the rate on an app of its own.
        settings = settings_for(root, url).model_copy(update={"export_per_client_per_min": 0})
        c = stack.enter_context(TestClient(create_app(settings), raise_server_exceptions=False))
        r = c.post("/v1/studies", json={"name": "ex", **assets, "search": {"n_trials": 1, "baselines": False}}, headers=AUTH)
        assert r.status_code == 201, r.text
        assert Worker(settings, worker_id="w").run_once()
        assert c.get("/v1/studies/ex/trials/0").json()["state"] == "COMPLETE"
        with session_factory(url)() as s:
            spec = parse_spec(s.query(Study).filter_by(name="ex").one().spec)
        yield SimpleNamespace(c=c, root=root, outside=outside, secret=secret, settings=settings, spec=spec,
                              base=Path(assets["pool"]["base"]))


def members(r) -> dict[str, bytes]:
    """name -> bytes of every member; each must be a regular file (no link in the tarball)."""
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert all(m.isfile() or m.isdir() for m in tar.getmembers())
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".*.partial-*")]


def refused(r, *parts: str, status: int = 403) -> None:
    assert r.status_code == status, r.text
    for part in parts:
        assert part in r.json()["detail"], (part, r.text)
    assert SECRET not in r.text


# ------------------------------------------------------------------ finding 3: side files


def test_side_file_link_planted_after_registration_is_refused_at_export_and_at_load(svc):
    """The reported attack: `<base>/merges.txt -> secret` added after the pool was registered,
    then an unauthenticated download. Refused (403 naming the file); never in any response."""
    assert SECRET.encode() not in b"".join(members(svc.c.get(DOWNLOAD)).values())
    link = svc.base / "merges.txt"
    link.symlink_to(svc.secret)
    try:
        refused(svc.c.get(DOWNLOAD), "merges.txt", "outside the allowed roots")
        refused(svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "out-side")}, headers=AUTH), "merges.txt")
        assert not (svc.root / "out-side").exists()
        # A study loading the pool (the worker's path) is refused the same way, with the reason.
        with pytest.raises(PoolFileRefused, match=r"checkpoint 'base'.*merges.txt resolves to .*outside the allowed roots"):
            studies.build_evaluator(svc.spec, progress=False, roots=svc.settings.allowed_roots)
    finally:
        link.unlink()
    # An existing side file swapped for a link, too.
    tok = svc.base / "tokenizer.json"
    kept = tok.read_bytes()
    tok.unlink()
    tok.symlink_to(svc.secret)
    try:
        refused(svc.c.get(DOWNLOAD), "tokenizer.json", "outside the allowed roots")
    finally:
        tok.unlink()
        tok.write_bytes(kept)
    assert leftovers(svc.root) == []


def test_side_file_link_planted_while_the_export_runs_is_refused(svc, monkeypatch):
    """The link appears after the pool was validated for this export, just before the copy:
    the copy opens it checked (resolve, O_NOFOLLOW, the descriptor's real path) and refuses."""
    link = svc.base / "merges.txt"
    monkeypatch.setattr(export, "before_write", lambda out: link.symlink_to(svc.secret))
    try:
        refused(svc.c.get(DOWNLOAD), "merges.txt", "outside the allowed roots")
    finally:
        link.unlink()


def test_links_inside_the_roots_are_copied_as_regular_files(svc):
    """HF-cache style links that stay inside the roots still work; the export holds a copy."""
    inside = svc.root / "shared-merges.txt"
    inside.write_text("#version: 0.2\n")
    link = svc.base / "merges.txt"
    link.symlink_to(inside)
    try:
        got = members(svc.c.get(DOWNLOAD))
    finally:
        link.unlink()
    assert got["ex-trial0/merges.txt"] == b"#version: 0.2\n"


def test_pool_files_swapped_for_links_are_refused_where_they_are_opened(tmp_path):
    """Weights, config and index, swapped for links out of the roots after validation or before
    it: refused with the file named; a FIFO side file is refused, not waited on."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    pool = make_pool(root / "pool", n=2)
    outside.mkdir()
    roots = [root.resolve()]
    ckpt = Path(pool["checkpoints"][1][1])
    info = validate_pool(pool["checkpoints"], pool["base"], roots=roots)
    names = sorted(info.reference.tensors)
    # Validated, then the weights swapped for a link to other weights outside the roots.
    stolen = outside / "model.safetensors"
    save_file({n: torch.zeros(info.reference.tensors[n].shape) for n in names}, str(stolen))
    weights = ckpt / "model.safetensors"
    weights.rename(ckpt / "real.bin")
    weights.symlink_to(stolen)
    with pytest.raises(PoolFileRefused, match=r"checkpoint 'ckpt1'.*model.safetensors resolves to .*outside the allowed roots"):
        load_checkpoint_tensors(info.checkpoints[1], names)
    with pytest.raises(PoolFileRefused, match="model.safetensors resolves to"):
        validate_pool(pool["checkpoints"], pool["base"], roots=roots)
    weights.unlink()
    (ckpt / "real.bin").rename(weights)
    # config.json, and a FIFO as a side file.
    cfg = ckpt / "config.json"
    cfg.rename(outside / "config.json")
    cfg.symlink_to(outside / "config.json")
    with pytest.raises(PoolFileRefused, match="config.json resolves to"):
        validate_pool(pool["checkpoints"], pool["base"], roots=roots)
    cfg.unlink()
    (outside / "config.json").rename(cfg)
    os.mkfifo(ckpt / "merges.txt")
    with pytest.raises(PoolFileRefused, match="merges.txt is not a regular file"):
        validate_pool(pool["checkpoints"], pool["base"], roots=roots)
    (ckpt / "merges.txt").unlink()
    # Links that stay inside the roots (an HF cache: snapshots -> blobs) are followed.
    blob = root / "blobs" / "weights"
    blob.parent.mkdir()
    weights.rename(blob)
    weights.symlink_to(blob)
    again = validate_pool(pool["checkpoints"], pool["base"], roots=roots)
    assert len(load_checkpoint_tensors(again.checkpoints[1], names)) == len(names)


# ------------------------------------------------------------------ finding 5: export target


def test_out_dir_swapped_for_a_link_between_check_and_write_writes_nothing_outside(svc, monkeypatch):
    """The reported race: out_dir checked by the route, then replaced by a link to a folder
    outside the roots before the export writes. Refused (403); the victim is untouched."""
    victim = svc.outside / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "config.json").write_text("precious")

    def check_then_swap(out):
        out.symlink_to(victim, target_is_directory=True)

    # Window 1: after the route's check, before the export starts.
    out = svc.root / "race-route"
    real_export = routes._export
    monkeypatch.setattr(routes, "_export", lambda settings, key, number, out_dir, roots: (
        check_then_swap(out_dir), real_export(settings, key, number, out_dir, roots))[1])
    refused(svc.c.post(DOWNLOAD, json={"out_dir": str(out)}, headers=AUTH), "is a symbolic link")
    monkeypatch.setattr(routes, "_export", real_export)
    # Window 2: after the export's own check of the target, before anything is written.
    out2 = svc.root / "race-write"
    monkeypatch.setattr(export, "before_write", check_then_swap)
    refused(svc.c.post(DOWNLOAD, json={"out_dir": str(out2)}, headers=AUTH), "is a symbolic link")
    # Window 2 for the folder above out_dir: the export keeps writing where it checked.
    parent = svc.root / "exports"
    parent.mkdir()

    def swap_parent(out):
        parent.rename(svc.root / "exports-moved")
        parent.symlink_to(victim, target_is_directory=True)

    monkeypatch.setattr(export, "before_write", swap_parent)
    r = svc.c.post(DOWNLOAD, json={"out_dir": str(parent / "out")}, headers=AUTH)
    refused(r, "outside the allowed roots")  # the listing afterwards would leave the roots
    assert (svc.root / "exports-moved" / "out" / "model.safetensors").is_file()
    assert sorted(os.listdir(victim)) == ["config.json"] and (victim / "config.json").read_text() == "precious"
    assert leftovers(svc.root) == [] and leftovers(svc.outside) == []
    for link in (out, out2, parent):
        link.unlink()


def test_export_targets_that_exist_are_refused_with_a_reason(svc):
    good = svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "fresh" / "deeper")}, headers=AUTH)
    assert good.status_code == 201, good.text
    assert {"model.safetensors", "config.json", "mergekit_config.yml"} <= set(good.json()["files"])
    assert oct((svc.root / "fresh" / "deeper").stat().st_mode & 0o777) == oct(0o755)
    (svc.root / "a-file").write_text("x")
    refused(svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "a-file")}, headers=AUTH), "not a folder", status=409)
    refused(svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "fresh" / "deeper")}, headers=AUTH),
            "not empty", status=409)
    (svc.root / "empty").mkdir()
    assert svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "empty")}, headers=AUTH).status_code == 201
    for bad in (svc.root / "nul\x00byte", svc.root / ("x" * 300)):  # refused, not an OSError (a 500) later
        with pytest.raises(PathNotAllowed, match="NUL byte or a name longer"):
            guard_path(bad, svc.settings.allowed_roots)
        assert svc.c.post(DOWNLOAD, json={"out_dir": str(bad)}, headers=AUTH).status_code in (403, 422)
    assert leftovers(svc.root) == []


def test_streamed_safetensors_are_byte_identical_to_safetensors_own(tmp_path):
    tensors = {"z": torch.randn(3, dtype=torch.float64), "y": torch.arange(3), "w": torch.randn(2, 2, dtype=torch.bfloat16),
               "v": torch.tensor([True, False]), "u": torch.randn(4), "t": torch.tensor(1.5, dtype=torch.float16),
               "s": torch.empty(0, 3)}
    save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        export._write_safetensors(fd, "ours.safetensors", tensors)
        with pytest.raises(FileExistsError):  # never written through something already there
            export._write_safetensors(fd, "ours.safetensors", tensors)
    finally:
        os.close(fd)
    ours, theirs = load_file(tmp_path / "ours.safetensors"), load_file(tmp_path / "theirs.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype
                                                for k in ours)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "theirs.safetensors").read_bytes()


# ------------------------------------------------------------------ finding 8: downloads


def _app(svc, **update) -> TestClient:
    return TestClient(create_app(svc.settings.model_copy(update=update), migrate=False), raise_server_exceptions=False)


def test_concurrent_exports_beyond_the_cap_get_429(svc, monkeypatch):
    entered, release = threading.Event(), threading.Event()

    def hold(out):
        entered.set()
        assert release.wait(60)

    monkeypatch.setattr(export, "before_write", hold)
    with _app(svc, export_concurrency=1, export_per_client_per_min=0) as c:
        first: dict = {}
        holder = threading.Thread(target=lambda: first.setdefault("r", c.get(DOWNLOAD)))
        holder.start()
        assert entered.wait(60)
        others: list = []
        threads = [threading.Thread(target=lambda: others.append(c.get(DOWNLOAD))) for _ in range(6)]
        threads.append(threading.Thread(target=lambda: others.append(
            c.post(DOWNLOAD, json={"out_dir": str(svc.root / "capped")}, headers=AUTH))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        release.set()
        holder.join(60)
        assert len(others) == 7
        for r in others:
            refused(r, "already running", "MERGEOPT_EXPORT_CONCURRENCY", status=429)
            assert int(r.headers["retry-after"]) > 0
        assert not (svc.root / "capped").exists()
        assert "ex-trial0/model.safetensors" in members(first["r"])
        monkeypatch.setattr(export, "before_write", None)
        assert c.get(DOWNLOAD).status_code == 200  # the slot was given back
    with _app(svc, export_concurrency=4, export_per_client_per_min=2) as c:
        assert [c.get(DOWNLOAD).status_code for _ in range(2)] == [200, 200]
        r = c.get(DOWNLOAD)
        refused(r, "MERGEOPT_EXPORT_PER_CLIENT_PER_MIN", status=429)
        assert 0 < int(r.headers["retry-after"]) <= 61


def test_downloads_need_a_token_when_reads_are_protected(svc):
    with _app(svc, protect_reads=True) as c:
        assert c.get(DOWNLOAD).status_code == 401
        assert c.get(DOWNLOAD, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert "ex-trial0/config.json" in members(c.get(DOWNLOAD, headers=AUTH))


def test_exports_merge_on_the_api_cpu_even_where_a_gpu_is_visible(svc, monkeypatch):
    """The study's device is "auto": on a GPU machine that is the workers' GPU. The export's
    resident pool is on the CPU all the same."""
    seen = []
    real = studies.ResidentPool

    def spy(pool, device, **kw):
        seen.append(torch.device(device).type)
        return real(pool, device, **kw)

    monkeypatch.setattr(studies, "ResidentPool", spy)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert svc.spec.device == "auto"
    members(svc.c.get(DOWNLOAD))
    assert svc.c.post(DOWNLOAD, json={"out_dir": str(svc.root / "on-cpu")}, headers=AUTH).status_code == 201
    assert seen == ["cpu", "cpu"]
    shutil.rmtree(svc.root / "on-cpu")


def test_cli_merge_refuses_link_file_and_full_targets_and_fills_an_empty_folder(tmp_path, capsys):
    """`mergeopt merge` / `export` (the operator's CLI, no roots) share the writer: a target that
    is a link, a file or a non-empty folder is one clear error (exit 2) and nothing is written."""
    pool = make_pool(tmp_path / "pool", n=2)
    cfg = tmp_path / "merge.yml"
    cfg.write_text("merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for _, p in pool["checkpoints"]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    for name, reason in (("link", "is a symbolic link"), ("file", "not a folder"), ("full", "not empty")):
        capsys.readouterr()
        assert main(["merge", str(cfg), str(tmp_path / name), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and reason in err and "Traceback" not in err, err
    assert os.listdir(elsewhere) == [] and os.listdir(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(cfg), str(tmp_path / "empty"), "-q"]) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file() and leftovers(tmp_path) == []
