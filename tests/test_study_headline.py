"""What the dashboard's study list and hypervolume chart read: the recommended merge's validation
objective with its interval (not the search documents' best), and a hypervolume history from the
trials, so a study run by `mergeopt run` (no front_changed events) charts more than one point."""

from fastapi.testclient import TestClient
from servicekit import make_assets, settings_for

from optimizer.spec import parse_spec
from service.api.app import create_app
from service.studies.runs import run_study


def test_recommended_headline_and_hypervolume_history_of_a_cli_study(tmp_path):
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/svc.db")
    assets = make_assets(tmp_path)
    with TestClient(create_app(settings)) as client:
        # The full warm step: with the default small one this 11-trial study stays next to the best
        # set-up trial and no later trial widens trial 0's front, so the history would be one point.
        search = {"n_trials": 11, "warm_sigma0": 0.3}
        run_study(parse_spec({"name": "cli", **assets, "search": search, "storage": settings.database_url}),
                  progress=False)
        study = client.get("/v1/studies/cli").json()
        front = client.get("/v1/studies/cli/front").json()
        trials = {t["number"]: t for t in client.get("/v1/studies/cli/trials").json()}
        search = client.get("/v1/studies/cli/front?split=search").json()

    rec = study["recommended"]
    assert study["state"] == "external" and rec is not None
    assert rec["trial"] == front["verdict"]["recommended"]
    objective = trials[rec["trial"]]["validation"]["objective"]
    assert rec["validation"] == {k: objective[k] for k in ("value", "lo", "hi")}
    assert rec["validation"]["lo"] <= rec["validation"]["value"] <= rec["validation"]["hi"]
    assert rec["search_objective"] == trials[rec["trial"]]["objective"]
    # why this trial, as the verdict decided it (optimizer/recommend.py): the real evaluator keeps
    # per-document search values, so the rule is the noise-aware one whenever a search trial led
    assert rec["rule"] == front["verdict"]["recommendation"]["rule"]
    assert rec["rule"] in ("best on search", "within noise", "beyond noise")
    assert all("search_docs" not in t for t in trials.values())  # kept in the study, not served per trial

    history = front["hypervolume_history"]
    assert len(history) > 1, history  # was a single point: only front snapshots were plotted
    numbers = [n for n, _ in history]
    values = [v for _, v in history]
    assert numbers == sorted(set(numbers)) and all(trials[n]["state"] == "COMPLETE" for n in numbers)
    assert all(a < b for a, b in zip(values, values[1:], strict=False))  # a front only grows
    assert values[-1] == search["hypervolume"]  # ends at the search documents' front
