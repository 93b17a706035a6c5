"""What a newcomer hits in the first hour (issue 12): the demo's study exported from another
folder and reproduced by mergekit-yaml, bad storage URLs, readers that must not create a
database, demo arguments checked before any training, hypervolume over informative tasks,
quiet perplexity runs, the reason a heartbeat-failed trial failed, help text and `init`."""

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file

import evaluators.demo.pool as demo_pool
from optimizer import records as R
from optimizer import validation as V
from optimizer.loop import StudyRunner
from optimizer.spec import load_spec, parse_spec
from optimizer.storage import open_storage
from service.cli.demo import min_demo_trials, setup_trials
from service.cli.main import build_parser, main
from service.studies.report import front_table

from fakes import QuadraticPool
from tinypool import make_extra_tasks, make_pool, make_tasks

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"


def one_error_line(err: str, *parts: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, f"{part!r} not in {err!r}"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no tensors in {folder}"
    return out


# --- 1: the demo's study exported from another folder -------------------------------------------


def test_demo_study_exports_from_another_folder_and_mergekit_reproduces_it(tmp_path, monkeypatch, capsys):
    """The demo run from folder a with a relative --workdir; export from folder b; mergekit-yaml
    run from folder c on the exported config gives the same tensors."""
    a, b, c = (tmp_path / d for d in "abc")
    for d in (a, b, c):
        d.mkdir()

    def tiny_demo_pool(root, **_):  # a tiny real pool instead of training one, at the relative path asked for
        root = Path(root)
        pool = make_pool(root, n=3, noise=0.3)
        include, names = make_tasks(root)
        assert not root.is_absolute()
        return demo_pool.DemoPool(root=root, base=root / "base", checkpoints=pool["checkpoints"],
                                  include_path=include, tasks=[{"task": n} for n in names])

    monkeypatch.setattr(demo_pool, "build_demo_pool", tiny_demo_pool)
    monkeypatch.chdir(a)
    assert main(["demo", "--workdir", "wd", "--trials", str(min_demo_trials()), "-q"]) == 0
    capsys.readouterr()
    url = f"sqlite:///{a / 'wd' / 'demo.db'}"

    monkeypatch.chdir(b)
    study = optuna.load_study(study_name="demo", storage=url)
    stored = study.user_attrs[R.A_SPEC]
    paths = [stored["pool"]["base"], stored["suite"]["include_path"], *(c["path"] for c in stored["pool"]["checkpoints"])]
    assert all(Path(p).is_absolute() and Path(p).is_dir() for p in paths), paths
    trial = max(r.number for r in R.trial_rows(study) if r.kind == "search" and r.state == "COMPLETE")
    assert main(["export", "demo", str(trial), "out", "--storage", url, "-q"]) == 0, capsys.readouterr().err
    config = b / "out" / "mergekit_config.yml"
    cfg = yaml.safe_load(config.read_text())
    assert all(Path(m["model"]).is_absolute() for m in cfg["models"])

    proc = subprocess.run([str(MERGEKIT_YAML), str(config), str(c / "mk"), "--quiet"], cwd=c,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours, theirs = tensors(b / "out"), tensors(c / "mk")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_exported_mergekit_config_has_absolute_paths_for_a_relative_pool(tmp_path, monkeypatch):
    from contract.merge import MergeSpec
    from evaluators.merging.mergekit_yaml import to_mergekit_yaml

    monkeypatch.chdir(tmp_path)
    spec = MergeSpec(method="ties", weights={"x": 0.5, "y": 1.0}, density=0.5)
    cfg = yaml.safe_load(to_mergekit_yaml(spec, [("x", Path("pool/x")), ("y", Path("pool/../pool/y"))],
                                          Path("pool/base"), "float32"))
    assert [m["model"] for m in cfg["models"]] == [str(tmp_path / "pool" / "x"), str(tmp_path / "pool" / "y")]
    assert cfg["base_model"] == str(tmp_path / "pool" / "base")


# --- 2, 3: storage URLs, and readers that must not create a database ---------------------------


@pytest.fixture()
def study_yaml(tmp_path):
    """A spec whose pool exists (run checks the storage before loading it)."""
    pool = make_pool(tmp_path / "pool", n=2)
    include, names = make_tasks(tmp_path)
    spec = {"name": "s", "pool": {"base": str(pool["base"]),
                                  "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
            "suite": {"include_path": str(include), "tasks": [{"task": names[0]}]},
            "storage": "sqlite:///s.db"}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


BAD_URLS = {
    "sqlite-folder-missing": ("sqlite:////no/such/dir/x.db", ["folder /no/such/dir does not exist"]),
    "postgres-scheme": ("postgres://me:secret@db.example/studies",
                        ["no 'postgres' dialect", "postgresql+psycopg://me:***@db.example/studies"]),
    "unknown-dialect": ("nosuchdb://x/y", ["unknown database 'nosuchdb'", "postgresql+psycopg://"]),
    "not-a-url": ("just words", ["is not a database URL"]),
}


@pytest.mark.parametrize("case", list(BAD_URLS))
@pytest.mark.parametrize("command", ["run", "front", "export", "worker"])
def test_bad_storage_url_is_one_error_line(study_yaml, tmp_path, monkeypatch, capsys, case, command):
    url, parts = BAD_URLS[case]
    monkeypatch.chdir(tmp_path)
    argv = {"run": ["run", str(study_yaml), "--storage", url, "-q"],
            "front": ["front", "s", "--storage", url],
            "export": ["export", str(study_yaml), "0", "out", "--storage", url],
            "worker": ["worker", "--db", url]}[command]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    one_error_line(err, *parts)
    assert "secret" not in err
    assert not (tmp_path / "out").exists()


def test_worker_with_a_device_it_lacks_is_one_error_line(tmp_path, capsys):
    assert main(["worker", "--db", f"sqlite:///{tmp_path}/w.db", "--device", "bogus"]) == 2
    one_error_line(capsys.readouterr().err, "device 'bogus' is not one of")


def test_unreachable_database_is_one_error_line(capsys):
    assert main(["front", "s", "--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/db"]) == 2
    one_error_line(capsys.readouterr().err, "cannot open the database", "127.0.0.1")


@pytest.mark.parametrize("argv", [
    ["front", "demo"],
    ["front", "demo", "--json", "--storage", "sqlite:///elsewhere.db"],
    ["export", "demo", "3", "out"],
    ["front", "study.yaml"],
    ["export", "study.yaml", "0", "out"],
], ids=["front-default", "front-storage", "export-default", "front-yaml", "export-yaml"])
def test_readers_do_not_create_a_database(study_yaml, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    db = "elsewhere.db" if "--storage" in argv else "s.db" if "study.yaml" in argv else "mergeopt.db"
    one_error_line(capsys.readouterr().err, f"database file {tmp_path / db} does not exist")
    assert sorted(p.name for p in tmp_path.glob("*.db")) == []
    assert not (tmp_path / "out").exists()


def test_front_of_an_existing_database_still_works(tmp_path, monkeypatch, capsys):
    """The existence check is on the file only: a stored study is read as before."""
    monkeypatch.chdir(tmp_path)
    runner = StudyRunner(_spec(tmp_path, n_trials=13), QuadraticPool(NAMES, HELPS), progress=False)
    runner.run()
    assert main(["front", "t", "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 0
    assert "Pareto front" in capsys.readouterr().out


# --- 4: demo arguments before any work ----------------------------------------------------------


@pytest.mark.parametrize("trials", ["-3", "0", str(min_demo_trials() - 1), "ten"])
def test_demo_refuses_a_bad_budget_before_building_the_pool(tmp_path, monkeypatch, capsys, trials):
    def no_training(*_, **__):
        raise AssertionError("the pool was built before the arguments were checked")

    monkeypatch.setattr(demo_pool, "build_demo_pool", no_training)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--workdir", str(tmp_path / "wd"), "--trials", trials])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --trials" in err and "Traceback" not in err
    if trials != "ten":
        assert f"at least {min_demo_trials()}" in err
    assert not (tmp_path / "wd").exists()


def test_demo_refuses_a_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        main(["demo", "--workdir", str(tmp_path / "f")])
    assert "is not a folder" in capsys.readouterr().err


NAMES = ["a", "b", "c", "d"]
HELPS = {"x": [0.6, 0.4, 0.0, 0.0], "y": [0.2, 0.2, 0.6, 0.0], "z": [0.4, 0.1, 0.2, 0.3]}


def _spec(tmp_path, **search):
    return parse_spec({
        "name": "t",
        "pool": {"base": "/m/base", "checkpoints": [{"name": n, "path": f"/m/{n}"} for n in NAMES]},
        "suite": {"tasks": [{"task": "x"}, {"task": "y"}, {"task": "z", "split": "held_out"}]},
        "search": search,
        "storage": f"sqlite:///{tmp_path}/s.db",
    })


def test_setup_trials_counts_what_a_study_runs_before_its_search(tmp_path):
    """The bound --trials uses: with exactly setup_trials + 1, one trial is a search trial."""
    n = setup_trials(len(NAMES)) + 1
    runner = StudyRunner(_spec(tmp_path, n_trials=n), QuadraticPool(NAMES, HELPS), progress=False)
    runner.run()
    kinds = [r.kind for r in R.trial_rows(runner.study) if r.state == "COMPLETE"]
    assert len(kinds) == n and kinds.count("search") == 1
    assert setup_trials(3) == 10  # 3 checkpoints, base, 4 merge baselines, greedy soup's 2
    assert min_demo_trials() == setup_trials(len(demo_pool.RECIPES)) + 1


# --- 10: a task every trial scores 0 on -------------------------------------------------------


class ZeroOnZ(QuadraticPool):
    """Task z is broken: every model scores 0 on it (on search and validation documents)."""

    def evaluate(self, c, fidelity=1.0):
        return {**super().evaluate(c, fidelity), "z": 0.0}

    def validate(self, c):
        out = super().validate(c)
        out["z"] = {"score": 0.0, "values": [0.0] * 20, "aggregation": "mean"}
        return out


def test_a_task_scored_zero_everywhere_is_left_out_of_the_hypervolume(tmp_path):
    runner = StudyRunner(_spec(tmp_path, n_trials=16), ZeroOnZ(NAMES, HELPS), progress=False)
    runner.run()
    rows = R.trial_rows(runner.study)
    assert all(r.normalized["z"] == 0 for r in rows if r.state == "COMPLETE")
    for split in ("search", "validation"):
        front = R.stored_front(runner.study, split)
        assert front["split"] == split and front["hypervolume_skips"] == ["z"]
        assert front["hypervolume"] > 0.1
        table = front_table(rows, front)
        assert f"hypervolume {front['hypervolume']:.4f} over 2 of 3 tasks" in table
        assert "left out 'z', where no trial scores above 0" in table
    # With every task informative nothing is left out and the line reads as before.
    (tmp_path / "ok").mkdir()
    ok = StudyRunner(_spec(tmp_path / "ok", n_trials=16), QuadraticPool(NAMES, HELPS), progress=False)
    ok.run()
    front = R.stored_front(ok.study)
    assert front["hypervolume_skips"] == []
    assert f"hypervolume {front['hypervolume']:.4f} (reference point: 0 on every task)" in front_table(
        R.trial_rows(ok.study), front)


def test_validation_front_hypervolume_skips_uninformative_tasks():
    spec = _spec(Path("/tmp"))

    def summary(x, y, z):
        return {"summary": {"normalized": {t: {"value": v} for t, v in zip("xyz", (x, y, z), strict=True)},
                            "objective": {"value": (x + y + z) / 3}}}

    attrs = {V.val_key(0): summary(0.5, 1.0, 0.0), V.val_key(1): summary(1.0, 0.5, 0.0)}
    front = V.front(spec, attrs, {0, 1})
    assert front["hypervolume_skips"] == ["z"]
    assert front["hypervolume"] == pytest.approx(0.75)  # the union of [0,.5]x[0,1] and [0,1]x[0,.5]


# --- 11: -q silences lm-eval's bars on perplexity tasks ------------------------------------------


@pytest.mark.parametrize("prefix_sharing", ["0", "1"])  # "0": lm-eval's own _loglikelihood_tokens, with its bar
def test_quiet_perplexity_run_prints_no_progress_bars(tmp_path, capfd, monkeypatch, prefix_sharing):
    monkeypatch.setenv("MERGEOPT_PREFIX_SHARING", prefix_sharing)
    pool = make_pool(tmp_path / "pool", n=2)
    include = make_extra_tasks(tmp_path, n_docs=8)
    spec = {"name": "ppl", "pool": {"base": str(pool["base"]),
                                    "checkpoints": [{"name": n, "path": str(p)} for n, p in pool["checkpoints"]]},
            "suite": {"include_path": str(include), "tasks": [{"task": "tiny_ppl", "metric": "word_perplexity,none"}],
                      "batch_size": 4},
            "search": {"n_trials": 4, "baselines": False}, "device": "cpu", "storage": "sqlite:///ppl.db"}
    path = tmp_path / "ppl.yaml"
    path.write_text(yaml.safe_dump(spec))
    capfd.readouterr()
    assert main(["run", str(path), "-q"]) == 0
    out, err = capfd.readouterr()
    assert "Pareto front" in out
    assert "it/s" not in err and "%|" not in err, err[-2000:]


# --- 15: why a heartbeat-failed trial failed ---------------------------------------------------


def test_a_trial_failed_by_heartbeat_says_why(tmp_path):
    url = f"sqlite:///{tmp_path}/hb.db"
    storage = open_storage(url, heartbeat_s=1, grace_s=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    study.set_user_attr(R.A_SPEC, {"name": "hb"})
    dead = study.ask()
    storage.record_heartbeat(dead._trial_id)  # then its worker dies: no more beats
    failed = study.ask()
    failed.set_user_attr(R.T_ERROR, "RuntimeError: boom")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    errors = {r.number: r.error for r in R.trial_rows(study)}
    assert errors[failed.number] == "RuntimeError: boom"
    reason = errors[dead.number]
    assert reason.startswith("worker stopped sending heartbeats (died or was killed); failed after ")
    assert reason.endswith(" s and retried")
    assert 2 <= int(reason.split("after ")[1].split(" s")[0]) <= 10
    # Not a mergeopt study: another client's failure is not ours to explain.
    other = optuna.create_study(study_name="other", storage=storage)
    other.tell(other.ask(), state=optuna.trial.TrialState.FAIL)
    assert [r.error for r in R.trial_rows(other)] == [None]


# --- 16: help, and `mergeopt init` ------------------------------------------------------------


def _subparsers(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


def test_every_argument_has_help_and_defaults_are_shown(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside the strings looked for
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            assert action.help, f"`mergeopt {name}` {action.dest} has no help text"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "(default: 80)" in text and "(default: mergeopt-demo)" in text and "examples:" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "mergeopt init study.yaml" in text and "mergeopt export study.yaml 42" in text
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "trial number" in text and "(default: None)" not in text


def test_init_writes_a_commented_spec_the_parser_accepts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert "wrote study.yaml" in capsys.readouterr().out
    text = (tmp_path / "study.yaml").read_text()
    assert text.count("#") > 20  # commented for a newcomer
    spec = load_spec(tmp_path / "study.yaml")
    assert spec.name == "my-study" and len(spec.pool.checkpoints) == 2
    assert spec.pool.base == str(tmp_path / "models" / "base")  # relative to the YAML's folder
    assert spec.suite.include_path == str(tmp_path / "tasks")
    assert {t.split for t in spec.suite.tasks} == {"held_in", "held_out"}
    assert spec.search.n_trials > setup_trials(len(spec.pool.checkpoints))
    # A name from the file; never overwritten without --force; stdout with "-".
    (tmp_path / "studies").mkdir()
    assert main(["init", "studies/code-chat.yaml"]) == 0
    assert load_spec(tmp_path / "studies" / "code-chat.yaml").name == "code-chat"
    capsys.readouterr()
    (tmp_path / "study.yaml").write_text("mine")
    assert main(["init"]) == 2
    one_error_line(capsys.readouterr().err, "study.yaml exists", "--force")
    assert (tmp_path / "study.yaml").read_text() == "mine"
    assert main(["init", "--force"]) == 0 and load_spec(tmp_path / "study.yaml").name == "my-study"
    capsys.readouterr()
    assert main(["init", "-"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "my-study"
