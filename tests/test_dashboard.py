"""The web dashboard: its pages and assets (test client), then the real thing in a browser
(Playwright driving Debian's chromium) against `mergeopt serve` with its in-process worker."""

import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from servicekit import AUTH, TOKEN, make_assets, parse_sse, settings_for, wait_for
from test_service_processes import serve, stop

from service.api.app import create_app

CHROMIUM = Path(os.environ.get("MERGEOPT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1280, "height": 800}


def expect(locator):
    """playwright's retrying assertions (imported late: the module must load without playwright)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def test_pages_and_assets_are_served(tmp_path):
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path}/pages.db")
    with TestClient(create_app(settings)) as c:
        r = c.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "/static/dashboard.js?v=" in r.text and 'data-page="studies"' in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        r = c.get("/studies/nope")
        assert r.status_code == 404 and "no study &#39;nope&#39;" in r.text
        js = c.get("/static/dashboard.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "EventSource" in js.text
        assert c.get("/static/dashboard.css").status_code == 200
        assert "/studies/{key}" not in c.get("/openapi.json").json()["paths"]  # pages stay out of the API docs
    settings.protect_reads = True
    with TestClient(create_app(settings)) as c:  # a shell that says nothing about which studies exist
        r = c.get("/studies/nope")
        assert r.status_code == 200 and 'data-protect-reads="true"' in r.text


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright is not importable ({exc}): pip install playwright")
    if not CHROMIUM.exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def service(browser, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    assets = make_assets(root)
    proc, base = serve(root, f"sqlite:///{root}/dash.db")
    try:
        yield base, assets, root
    finally:
        stop(proc)


def serve_protected(root, url):
    """A second API on the same database, reads guarded, no worker."""
    return serve(root, url, "--no-worker", env={"MERGEOPT_PROTECT_READS": "true"})


def create(base: str, assets: dict, name: str, n_trials: int) -> dict:
    r = httpx.post(f"{base}/v1/studies", json={"name": name, **assets, "search": {"n_trials": n_trials}},
                   headers=AUTH, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def test_dashboard_in_a_browser(service, browser, tmp_path):
    base, assets, root = service
    create(base, assets, "dash", 12)
    wait_for(lambda: httpx.get(f"{base}/v1/studies/dash").json()["state"] in ("completed", "failed"), timeout=120)
    study = httpx.get(f"{base}/v1/studies/dash").json()
    assert study["state"] == "completed", study
    trials = httpx.get(f"{base}/v1/studies/dash/trials").json()
    front = httpx.get(f"{base}/v1/studies/dash/front").json()
    page = browser.new_page(viewport=VIEWPORT, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # The list: name, state, progress, best score; a link to the study.
    page.goto(f"{base}/")
    row = page.locator('tr[data-study="dash"]')
    row.wait_for()
    assert row.locator(".badge").inner_text() == "completed"
    assert row.locator(".progress-text").inner_text() == "12 / 12"
    # The headline is the recommended merge on validation documents with its interval (issue 23),
    # not the search documents' optimistic best.
    rec = study["recommended"]["validation"]
    assert f"{rec['value']:.3f} [{rec['lo']:.3f}, {rec['hi']:.3f}]" in row.inner_text()
    assert row.locator('td[data-split="validation"]').count() == 1
    assert f"#{study['recommended']['trial']} " in row.inner_text()
    assert row.get_attribute("data-state") == "completed"
    assert row.locator('button[data-action="pause"]').is_disabled()
    page.screenshot(path=str(tmp_path / "studies.png"), full_page=True)

    # The study, on validation documents by default: every validated trial plotted with its 95%
    # intervals, the (validation) front marked, baselines and the base told apart, the verdict shown.
    row.locator("a").click()
    page.wait_for_url(f"{base}/studies/dash")
    pair = page.locator('#pareto [data-pair="0-1"]')
    pair.locator(".pt").first.wait_for()
    validated = [t for t in trials if t["state"] == "COMPLETE" and t["validation"]]
    assert front["split"] == "validation" and 10 <= len(validated) <= 12  # references, baselines, front trials
    assert pair.locator(".pt").count() == len(validated)
    assert pair.locator('[data-front="1"]').count() == len(front["front"])
    assert {int(n) for n in pair.locator('[data-front="1"]').evaluate_all("els => els.map(e => e.dataset.trial)")} \
        == {e["trial"] for e in front["front"]}
    assert pair.locator('[data-kind="ckpt"]').count() == 3
    assert pair.locator('[data-kind="base"]').count() == 1
    merges = [t for t in validated if t["kind"] == "baseline" and t["label"] != "base" and not t["label"].startswith("checkpoint:")]
    assert pair.locator('[data-kind="merge"]').count() == len(merges) >= 4  # uniform, TA, TIES, DARE-TIES, greedy soup
    assert pair.locator(".err-bar").count() >= len(validated)  # a cross per point (a bar of zero width still drawn)
    assert "verdict on validation documents" in page.locator("#verdict").inner_text()
    axis_titles = page.locator("#pareto .axis-title").all_text_contents()
    assert any(front["tasks"][0] in t for t in axis_titles) and any(front["tasks"][1] in t for t in axis_titles)
    assert page.locator("#legend li").count() >= 5
    assert page.locator("#trials tbody tr").count() == 12

    # A real click on the point that is on top at its spot selects it: weights and scores show.
    box = pair.locator('[data-front="1"]').first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y).closest('.pt').dataset.trial", [cx, cy])
    page.mouse.move(cx, cy)
    assert page.locator("#tooltip").is_visible() and f"#{hit} " in page.locator("#tooltip").inner_text()
    page.mouse.click(cx, cy)
    chosen = next(t for t in trials if t["number"] == int(hit))
    assert page.locator(f'#pareto .pt.selected[data-trial="{hit}"]').count() == 1
    assert page.locator("#sel-summary").inner_text().startswith(f"#{hit} {chosen['label']}")
    bars = page.locator("#weights [data-weight]")
    assert bars.evaluate_all("els => els.map(e => e.dataset.weight)") == ["ckpt0", "ckpt1", "ckpt2"]
    assert all(name in page.locator("#weights").text_content() for name in ("ckpt0", "ckpt1", "ckpt2"))
    shown = [float(v) for v in bars.evaluate_all("els => els.map(e => e.dataset.value)")]
    w = chosen["candidate"]["weights"]
    want = [w[k] / sum(w.values()) for k in ("ckpt0", "ckpt1", "ckpt2")] if chosen["candidate"]["method"] == "linear" \
        else [w[k] for k in ("ckpt0", "ckpt1", "ckpt2")]
    assert shown == pytest.approx(want)
    scores = page.locator("#scores tbody").inner_text()
    assert all(task in scores for task in front["tasks"]) and f"{chosen['objective']:.3f}" in scores
    v = chosen["validation"]["objective"]
    assert f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" in scores  # the validation score with its interval
    assert page.locator('#trials tbody tr[aria-selected="true"]').get_attribute("data-trial") == hit

    # A row click selects too; sorting by objective (descending first) puts the best on top.
    page.locator('#trials th[data-col="objective"] button').click()
    first = page.locator("#trials tbody tr").first
    assert first.get_attribute("data-trial") == str(study["best"]["trial"])
    assert page.locator('#trials th[data-col="objective"]').get_attribute("aria-sort") == "descending"
    # Click the row by its trial (a live refresh may re-render the table between two lookups).
    page.locator(f'#trials tbody tr[data-trial="{study["best"]["trial"]}"]').click()
    assert page.locator(".pt.selected").get_attribute("data-trial") == str(study["best"]["trial"])
    assert page.locator('#history [data-chart="hypervolume"] .hv-dot').count() >= 1
    page.screenshot(path=str(tmp_path / "study.png"), full_page=True)

    # The search documents' scores stay available for diagnosis: every completed trial.
    page.locator('button[data-split="search"]').click()
    expect(page.locator('button[data-split="search"]')).to_have_attribute("aria-pressed", "true")
    expect(pair.locator(".err-bar")).to_have_count(0)  # search scores carry no intervals
    expect(pair.locator(".pt")).to_have_count(12)
    page.locator('button[data-split="validation"]').click()
    expect(pair.locator(".pt")).to_have_count(len(validated))

    # Export downloads GET .../trials/{n}/export.
    with page.expect_download(timeout=60_000) as dl:
        page.locator("#export").click()
    assert dl.value.suggested_filename == f"dash-trial{study['best']['trial']}.tar.gz"

    # A running study updates live: more points appear without a reload.
    create(base, assets, "live", 60)
    page.goto(f"{base}/studies/live")
    page.locator("#summary .badge").wait_for()
    page.evaluate("window.__sameDocument = true")
    page.locator('button[data-split="search"]').click()  # every finished trial, validated or not
    page.wait_for_function("() => document.querySelector('button[data-split=search]').getAttribute('aria-pressed') === 'true'")
    before = int(page.locator("#pareto").get_attribute("data-plotted") or 0)
    page.wait_for_function("n => Number(document.querySelector('#pareto').dataset.plotted) >= n", arg=before + 3,
                           timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#live").inner_text().startswith("live")
    assert int(page.locator("#trials tbody tr").count()) >= before + 3
    page.screenshot(path=str(tmp_path / "live.png"), full_page=True)

    # Controls need the token: a wrong one shows the API's 403, the right one cancels.
    page.goto(f"{base}/")
    page.on("dialog", lambda d: d.accept())  # the "cancel this study?" confirmation
    live = page.locator('tr[data-study="live"]')
    live.locator('button[data-action="cancel"]').click()
    page.locator("#token-dialog").wait_for()
    page.fill("#token-input", "wrong")
    page.locator('#token-dialog button[value="ok"]').click()
    page.locator("#message", has_text="invalid token").wait_for()
    assert "403" in page.locator("#message").inner_text()
    page.screenshot(path=str(tmp_path / "refused.png"))
    live.locator('button[data-action="cancel"]').click()
    page.fill("#token-input", TOKEN)
    page.press("#token-input", "Enter")
    page.locator("#message", has_text="is now cancelled").wait_for()
    wait_for(lambda: httpx.get(f"{base}/v1/studies/live").json()["state"] == "cancelled", timeout=10)
    live.locator(".badge", has_text="cancelled").wait_for()
    assert page.evaluate("sessionStorage.getItem('mergeopt.token')") == TOKEN
    assert not errors, errors
    page.close()

    # Protected reads: the page asks for the token first, then reads and follows events with it
    # (EventSource cannot send a header: the events come through fetch instead).
    proc, guarded = serve_protected(root, f"sqlite:///{root}/dash.db")
    try:
        assert httpx.get(f"{guarded}/v1/studies/dash").status_code == 401
        page = browser.new_page(viewport=VIEWPORT)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{guarded}/studies/dash")
        page.locator("#token-dialog").wait_for()
        page.fill("#token-input", TOKEN)
        page.press("#token-input", "Enter")
        page.locator('#pareto [data-pair="0-1"] .pt').first.wait_for()
        assert page.locator('#pareto [data-pair="0-1"] .pt').count() == len(validated)
        page.locator("#live", has_text="study completed").wait_for()
        with httpx.stream("GET", f"{guarded}/v1/studies/dash/events", headers=AUTH, timeout=30) as r:
            changes = [e for e in parse_sse(r.read().decode()) if e["type"] == "front_changed"]
        expect(page.locator('#history [data-chart="hypervolume"] .hv-dot')).to_have_count(len(changes))  # events were read
        page.close()
    finally:
        stop(proc)
    assert not errors, errors


def test_three_tasks_draw_a_scatter_matrix(service, browser, tmp_path):
    """3+ tasks: one panel per pair of tasks, every trial and the same front in each. The API
    answers are canned here (page.route), so no study has to run."""
    import json
    import random
    import re

    base, _, _ = service
    tasks = ["t_a", "t_b", "t_c"]
    rng = random.Random(0)
    trials = []
    for n in range(14):
        label = f"checkpoint:ck{n}" if n < 3 else ["uniform", "task_arithmetic", "ties", "dare_ties"][n - 3] if n < 7 else f"trial {n}"
        norm = {t: round(rng.uniform(0.2, 1.2), 3) for t in tasks}
        trials.append({"number": n, "state": "COMPLETE", "kind": "baseline" if n < 7 else "search", "label": label,
                       "candidate": {"method": "ties", "weights": {"ck0": 0.5, "ck1": 0.2, "ck2": 0.9}, "density": 0.5,
                                     "lambda": 1.0, "normalize": None, "seed": 0},
                       "raw": {t: v / 2 for t, v in norm.items()}, "normalized": norm,
                       "objective": sum(norm.values()) / 3, "timings": {"total_s": 1.5}, "error": None})
    trials.append({"number": 14, "state": "FAIL", "kind": "search", "label": "trial 14", "candidate": {},
                   "raw": {}, "normalized": {}, "objective": None, "timings": {}, "error": "RuntimeError: boom"})

    def dominated(p):
        return any(all(q["normalized"][t] >= p["normalized"][t] for t in tasks) and q is not p
                   and any(q["normalized"][t] > p["normalized"][t] for t in tasks) for q in trials[:14])

    on_front = [t for t in trials[:14] if not dominated(t)]
    best = max(trials[:14], key=lambda t: t["objective"])
    study = {"id": "x", "name": "dash", "state": "completed", "priority": 0, "pool_id": "p", "suite_id": "s",
             "search": {"method": "ties", "sampler": "cmaes"}, "progress": {"completed": 14, "running": 0, "failed": 1, "budget": 15},
             "best": {"trial": best["number"], "label": best["label"], "objective": best["objective"], "normalized": best["normalized"]},
             "hypervolume": 0.5, "error": None, "created_at": "2026-01-01T00:00:00", "updated_at": "2026-01-01T00:01:00"}
    front = {"tasks": tasks, "hypervolume": 0.5, "reference_point": [0, 0, 0],
             "front": [{"trial": t["number"], "label": t["label"], "kind": t["kind"], "objective": t["objective"],
                        "merge": t["candidate"], "raw": t["raw"], "normalized": t["normalized"]} for t in on_front]}
    events = "".join(f"id: {i + 1}\nevent: {kind}\ndata: {json.dumps(data)}\n\n" for i, (kind, data) in enumerate(
        [("trial_finished", {"trial": 0}), ("front_changed", {"trials": [0], "hypervolume": 0.2}),
         ("trial_finished", {"trial": 9}), ("front_changed", {"trials": [0, 9], "hypervolume": 0.5}),
         ("state", {"state": "completed"})]))
    answers = {"": study, "/trials": trials, "/front": front}

    def answer(route):
        path = re.sub(r"^.*/v1/studies/dash", "", route.request.url.split("?")[0])
        if path == "/events":
            route.fulfill(status=200, content_type="text/event-stream", body=events)
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answers[path]))

    page = browser.new_page(viewport=VIEWPORT)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.route(re.compile(r".*/v1/studies/dash(/(trials|front|events))?(\?.*)?$"), answer)
    page.goto(f"{base}/studies/dash")
    page.locator("#live", has_text="study completed").wait_for()
    panels = page.locator("#pareto [data-pair]")
    assert sorted(panels.evaluate_all("els => els.map(e => e.dataset.pair)")) == ["0-1", "0-2", "1-2"]
    for pair in ("0-1", "0-2", "1-2"):
        panel = page.locator(f'#pareto [data-pair="{pair}"]')
        assert panel.locator(".pt").count() == 14  # the failed trial has no scores to plot
        assert panel.locator('[data-front="1"]').count() == len(on_front)
    titles = page.locator("#pareto .axis-title").all_text_contents()
    assert set(titles) == {"t_a", "t_b", "t_c"}
    assert page.locator("#trials tbody tr").count() == 15
    assert "boom" in page.locator('#trials tbody tr[data-trial="14"]').inner_text()
    expect(page.locator('#history [data-chart="hypervolume"] .hv-dot')).to_have_count(2)
    page.locator('#trials tbody tr[data-trial="9"]').click()
    assert page.locator("#weights [data-weight]").evaluate_all("els => els.map(e => e.dataset.weight)") == ["ck0", "ck1", "ck2"]
    page.screenshot(path=str(tmp_path / "matrix.png"), full_page=True)
    assert not errors, errors
    page.close()
