/* mergeopt dashboard: plain JS, no dependencies, draws SVG. Reads /v1 (the same JSON as the API),
 * follows /v1/studies/{id}/events for live updates, and sends the bearer token kept in
 * sessionStorage with pause/resume/cancel (and with every read when the server protects reads). */
(() => {
  "use strict";

  const body = document.body;
  const ROOT = body.dataset.root || "";
  const API = ROOT + "/v1";
  const PROTECT = body.dataset.protectReads === "true";
  const KEY = body.dataset.key || "";
  const TOKEN_KEY = "mergeopt.token";
  const SVGNS = "http://www.w3.org/2000/svg";
  const TERMINAL = new Set(["completed", "failed", "cancelled"]);
  const ACTIONS = {
    pause: ["queued", "running"],
    resume: ["paused"],
    cancel: ["queued", "running", "paused"],
  };
  const EVENT_TYPES = ["trial_started", "trial_finished", "trial_failed", "trial_validated", "front_changed", "state"];
  const KIND_NAMES = { search: "Search trial", ckpt: "Single checkpoint", base: "Base model", merge: "Merge baseline" };

  // ------------------------------------------------------------------ DOM helpers
  function build(el, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) => build(document.createElementNS(SVGNS, tag), attrs, children);
  const $ = (sel) => document.querySelector(sel);

  /** Re-render inside ``container`` without losing keyboard focus (by data-focus-key). */
  function keepFocus(container, render) {
    const key = container.contains(document.activeElement) ? document.activeElement.dataset.focusKey : undefined;
    render();
    if (key === undefined) return;
    const again = [...container.querySelectorAll("[data-focus-key]")].find((el) => el.dataset.focusKey === key);
    if (again && !again.disabled) again.focus();
  }
  /** replaceChildren without the nulls (which it would print as "null"). */
  const fill = (el, ...children) => el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  const enc = encodeURIComponent;

  function fmt(x, digits = 3) {
    return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
  }

  function parseDate(text) {
    if (!text) return null;
    // SQLite hands back naive datetimes; the service stores UTC.
    const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : text + "Z";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function dateEl(text) {
    const d = parseDate(text);
    if (!d) return h("span", { class: "muted" }, "–");
    const p = (n) => String(n).padStart(2, "0");
    const local = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    return h("time", { datetime: d.toISOString(), title: d.toISOString() }, local);
  }

  const badge = (state) => h("span", { class: `badge ${state}` }, state);

  // ------------------------------------------------------------------ messages
  function showMessage(text, kind = "error", source = "") {
    const box = $("#message");
    box.dataset.source = source;
    box.textContent = text;
    box.className = kind === "error" ? "message" : "message info";
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.hidden = false;
  }

  function hideMessage(source = null) {
    const box = $("#message");
    if (source === null || box.dataset.source === source) box.hidden = true;
  }

  // ------------------------------------------------------------------ token
  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set(value) {
      sessionStorage.setItem(TOKEN_KEY, value);
      renderToken();
    },
    clear() {
      sessionStorage.removeItem(TOKEN_KEY);
      renderToken();
    },
  };

  function renderToken() {
    const has = Boolean(token.get());
    $("#token-state").textContent = has ? "token: set for this tab" : "token: not set";
    $("#token-set").textContent = has ? "Change token" : "Set token";
    $("#token-forget").hidden = !has;
  }

  let pendingAsk = null;
  function askToken(why) {
    if (pendingAsk) return pendingAsk;
    const dialog = $("#token-dialog");
    const input = $("#token-input");
    input.value = "";
    $("#token-title").textContent = why ? `Bearer token: ${why}` : "Bearer token";
    pendingAsk = new Promise((resolve) => {
      dialog.addEventListener("close", () => {
        pendingAsk = null;
        const value = input.value.trim();
        if (dialog.returnValue === "ok" && value) {
          token.set(value);
          resolve(value);
        } else resolve(null);
      }, { once: true });
    });
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
    return pendingAsk;
  }

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, { method = "GET", auth = PROTECT } = {}) {
    const headers = { Accept: "application/json" };
    const t = token.get();
    if (auth && t) headers.Authorization = `Bearer ${t}`;
    let r;
    try {
      r = await fetch(API + path, { method, headers, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, `server unreachable (${e.message})`);
    }
    if (!r.ok) {
      let detail = r.statusText || "request failed";
      try {
        const j = await r.json();
        if (j && j.detail !== undefined) detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail);
      } catch {
        /* not JSON */
      }
      throw new ApiError(r.status, detail);
    }
    return r.json();
  }

  /** A read; with protected reads, asks for the token (once) when it is missing or refused. */
  async function readApi(path) {
    if (PROTECT && !token.get()) await askToken("this server protects reads");
    try {
      return await api(path);
    } catch (e) {
      if (PROTECT && (e.status === 401 || e.status === 403)) {
        token.clear();
        if (await askToken(`${e.message} (HTTP ${e.status})`)) return api(path);
      }
      throw e;
    }
  }

  async function studyAction(name, action) {
    const t = token.get() || (await askToken(`needed to ${action} studies`));
    if (!t) {
      showMessage(`Not sent: ${action} "${name}" needs a bearer token.`);
      return null;
    }
    try {
      const out = await api(`/studies/${enc(name)}/${action}`, { method: "POST", auth: true });
      showMessage(`Study "${name}" is now ${out.state}.`, "info");
      return out;
    } catch (e) {
      if (e.status === 401 || e.status === 403) token.clear(); // ask again next time
      showMessage(`Could not ${action} "${name}": ${e.message}` + (e.status ? ` (HTTP ${e.status})` : ""));
      return null;
    }
  }

  function actionButtons(study, after) {
    const labels = { pause: "Pause", resume: "Resume", cancel: "Cancel" };
    return Object.keys(ACTIONS).map((action) => h("button", {
      type: "button",
      class: action === "cancel" ? "danger" : null,
      "data-action": action,
      "data-focus-key": `${study.name}:${action}`,
      "aria-label": `${labels[action]} study ${study.name}`,
      title: ACTIONS[action].includes(study.state) ? null : `not possible while ${study.state}`,
      disabled: !ACTIONS[action].includes(study.state),
      onclick: async (ev) => {
        if (action === "cancel" && !window.confirm(`Cancel study "${study.name}"? A cancelled study cannot be resumed.`)) return;
        const button = ev.currentTarget;
        button.disabled = true; // no double sends; the refresh after() draws the new state
        if (!(await studyAction(study.name, action))) button.disabled = false;
        after();
      },
    }, labels[action]));
  }

  function progressCell(p) {
    const extra = [p.running ? `${p.running} running` : null, p.failed ? `${p.failed} failed` : null].filter(Boolean);
    return h("div", { class: "progress", "data-completed": p.completed, "data-budget": p.budget },
      h("progress", { max: p.budget, value: Math.min(p.completed, p.budget), "aria-label": `${p.completed} of ${p.budget} trials done` }),
      h("span", { class: "progress-text" }, `${p.completed} / ${p.budget}`),
      extra.length ? h("span", { class: "muted" }, extra.join(", ")) : null);
  }

  // ------------------------------------------------------------------ scales and axes
  function niceStep(span, count) {
    const raw = span / Math.max(count, 1);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const err = raw / mag;
    return (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1) * mag;
  }

  function ticks(d0, d1, count = 5, integer = false) {
    if (!(d1 > d0)) return [d0];
    let step = niceStep(d1 - d0, count);
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = Math.ceil(d0 / step) * step; v <= d1 + step * 1e-9; v += step) out.push(Number(v.toFixed(12)));
    return out;
  }

  function tickLabel(values) {
    if (values.length < 2) return (v) => String(Number(v.toFixed(4)));
    const step = Math.abs(values[1] - values[0]);
    const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
    return (v) => v.toFixed(digits);
  }

  function scale(domain, range) {
    const [d0, d1] = domain;
    const [r0, r1] = range;
    const f = (v) => r0 + ((v - d0) / (d1 - d0 || 1)) * (r1 - r0);
    f.domain = domain;
    f.range = range;
    return f;
  }

  function extent(values, pad = 0.06, { floor = null } = {}) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
    if (hi - lo < 1e-9) {
      const d = Math.abs(hi) > 1e-9 ? Math.abs(hi) * 0.05 : 0.5;
      lo -= d;
      hi += d;
    }
    const span = hi - lo;
    lo -= span * pad;
    hi += span * pad;
    if (floor !== null) lo = Math.max(lo, floor);
    return [lo, hi];
  }

  /** Grid lines, tick labels, axis lines and titles of one x/y panel. */
  function axes(g, sx, sy, { xTitle, yTitle, xCount = 6, yCount = 5, xInteger = false, grid = true, xLabels = true, yLabels = true }) {
    const [x0, x1] = sx.range;
    const [y0, y1] = sy.range; // y0 bottom, y1 top
    const xt = ticks(...sx.domain, xCount, xInteger);
    const yt = ticks(...sy.domain, yCount);
    const fx = xInteger ? (v) => String(v) : tickLabel(xt);
    const fy = tickLabel(yt);
    const ax = s("g", { class: "axis" });
    for (const v of xt) {
      const x = sx(v);
      if (grid) ax.append(s("line", { class: "grid-line", x1: x, x2: x, y1: y0, y2: y1 }));
      ax.append(s("g", { class: "tick" }, s("line", { x1: x, x2: x, y1: y0, y2: y0 + 4 }),
        xLabels ? s("text", { x, y: y0 + 16, "text-anchor": "middle" }, fx(v)) : null));
    }
    for (const v of yt) {
      const y = sy(v);
      if (grid) ax.append(s("line", { class: "grid-line", x1: x0, x2: x1, y1: y, y2: y }));
      ax.append(s("g", { class: "tick" }, s("line", { x1: x0 - 4, x2: x0, y1: y, y2: y }),
        yLabels ? s("text", { x: x0 - 7, y: y + 4, "text-anchor": "end" }, fy(v)) : null));
    }
    ax.append(s("line", { x1: x0, x2: x1, y1: y0, y2: y0 }), s("line", { x1: x0, x2: x0, y1: y0, y2: y1 }));
    if (xTitle) ax.append(s("text", { class: "axis-title", x: (x0 + x1) / 2, y: y0 + 34, "text-anchor": "middle" }, xTitle));
    if (yTitle) {
      const cx = x0 - 46;
      const cy = (y0 + y1) / 2;
      ax.append(s("text", { class: "axis-title", x: cx, y: cy, "text-anchor": "middle", transform: `rotate(-90 ${cx} ${cy})` }, yTitle));
    }
    g.append(ax);
  }

  // ------------------------------------------------------------------ markers
  function kindOf(t) {
    if (t.kind !== "baseline") return "search";
    if (t.label === "base") return "base"; // the pool's base alone: a single model like each checkpoint
    return String(t.label || "").startsWith("checkpoint:") ? "ckpt" : "merge";
  }

  function marker(kind, r) {
    if (kind === "ckpt") return s("rect", { class: "mark k-ckpt", x: -r, y: -r, width: 2 * r, height: 2 * r });
    if (kind === "merge") {
      const d = r * 1.35;
      return s("path", { class: "mark k-merge", d: `M0 ${-d}L${d} 0L0 ${d}L${-d} 0Z` });
    }
    if (kind === "base") {
      const d = r * 1.3;
      return s("path", { class: "mark k-base", d: `M0 ${-d}L${d} ${d * 0.8}L${-d} ${d * 0.8}Z` });
    }
    return s("circle", { class: "mark k-search", r });
  }

  // ------------------------------------------------------------------ studies list page
  function studiesPage() {
    const tbody = $("#studies tbody");
    let last = "";

    // The headline is the recommended merge on validation documents, with its interval; the
    // search documents' best (optimistic) shows only labelled as such, until validation exists.
    function headline(st) {
      const rec = st.recommended, best = st.best;
      if (rec) {
        const v = rec.validation;
        return h("td", { class: "num", "data-best": v.value, "data-split": "validation" },
          `${fmt(v.value)} [${fmt(v.lo)}, ${fmt(v.hi)}]`,
          h("div", { class: "muted", title: rec.rule ? `chosen: ${rec.rule} (see the study's verdict)` : "" }, `#${rec.trial} ${rec.label}`));
      }
      return h("td", { class: "num", "data-best": "", "data-split": best ? "search" : "" },
        best ? h("div", { class: "muted" }, `search docs: ${fmt(best.objective)} (#${best.trial} ${best.label})`) : "–");
    }

    function row(st) {
      return h("tr", { "data-study": st.name, "data-state": st.state },
        h("th", { scope: "row" }, h("a", { href: `${ROOT}/studies/${enc(st.name)}` }, st.name)),
        h("td", {}, badge(st.state), st.error ? h("div", { class: "muted", title: st.error }, st.error.slice(0, 80)) : null),
        h("td", {}, progressCell(st.progress)),
        headline(st),
        h("td", { class: "num" }, fmt(st.hypervolume, 4)),
        h("td", {}, dateEl(st.created_at)),
        h("td", {}, dateEl(st.updated_at)),
        h("td", {}, h("div", { class: "actions" }, actionButtons(st, () => refresh(true)))));
    }

    async function refresh(force = false) {
      let studies;
      try {
        studies = await readApi("/studies");
      } catch (e) {
        showMessage(`Could not load the studies: ${e.message}` + (e.status ? ` (HTTP ${e.status})` : ""), "error", "load");
        return;
      }
      hideMessage("load");
      const now = new Date().toLocaleTimeString();
      $("#studies-updated").textContent = `${studies.length} studies · refreshed ${now}`;
      const text = JSON.stringify(studies);
      if (text === last && !force) return;
      last = text;
      keepFocus(tbody, () => fill(tbody, studies.length
        ? studies.map(row)
        : h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No studies yet: POST one to /v1/studies."))));
    }

    refresh();
    setInterval(() => {
      if (!document.hidden && !pendingAsk) refresh();
    }, 3000);
  }

  // ------------------------------------------------------------------ study page
  const S = {
    study: null,
    trials: [],
    byNumber: new Map(),
    front: null,
    frontSet: new Set(),
    tasks: [],
    selected: null,
    userSelected: false,
    sort: { key: "number", dir: 1 },
    hv: [], // {trial, hv} per front_changed event
    lastFinished: null,
    lastEventId: 0,
    eventState: null,
    events: 0,
    refreshing: false,
    dirty: false,
    timer: null,
    retry: 1000,
    split: "validation", // which documents the plot, the selection and the table show
  };

  // Scores on the shown split: validation (never seen by the search, with 95% intervals) or search.
  function onValidation() {
    return S.split === "validation" && S.front?.split === "validation";
  }
  function nz(t, k) {
    if (!onValidation()) return t.normalized?.[k];
    return t.validation?.normalized?.[k]?.value;
  }
  function ci(t, k) {
    const e = onValidation() ? t.validation?.normalized?.[k] : null;
    return e && Number.isFinite(e.lo) && Number.isFinite(e.hi) ? [e.lo, e.hi] : null;
  }
  function objective(t) {
    return onValidation() ? t.validation?.objective?.value : t.objective;
  }
  function splitName() {
    return onValidation() ? "validation documents" : "search documents";
  }

  function studyPage() {
    const m = /^#trial=(\d+)$/.exec(location.hash);
    if (m) {
      S.selected = Number(m[1]);
      S.userSelected = true;
    }
    $("#export").addEventListener("click", exportSelected);
    load().then((ok) => {
      if (ok) subscribe();
    });
  }

  async function load() {
    if (S.refreshing) {
      S.dirty = true;
      return false;
    }
    S.refreshing = true;
    try {
      const [study, trials, front] = await Promise.all([
        readApi(`/studies/${enc(KEY)}`), readApi(`/studies/${enc(KEY)}/trials`), readApi(`/studies/${enc(KEY)}/front?split=${S.split}`),
      ]);
      S.study = study;
      S.front = front;
      S.tasks = front.tasks;
      S.frontSet = new Set(front.front.map((e) => e.trial));
      S.byNumber = new Map(trials.map((t) => [t.number, t]));
      // The front is read after the trials: a trial that finished in between is taken from it.
      for (const e of front.front) {
        if (!S.byNumber.has(e.trial)) {
          S.byNumber.set(e.trial, { number: e.trial, state: "COMPLETE", kind: e.kind, label: e.label, candidate: e.merge,
            raw: e.search?.raw ?? e.raw, normalized: e.search?.normalized ?? e.normalized, objective: e.search?.objective ?? e.objective, timings: {}, error: null,
            validation: e.intervals ? { objective: e.intervals.objective, raw: e.intervals.raw, normalized: e.intervals.normalized, n: e.intervals.documents } : null });
        }
      }
      S.trials = [...S.byNumber.values()].sort((a, b) => a.number - b.number);
      if (!S.userSelected || !S.byNumber.has(S.selected)) { // follow the best until a click
        S.selected = study.best ? study.best.trial : front.front.length ? front.front[0].trial : null;
      }
      renderAll();
      hideMessage("load");
      return true;
    } catch (e) {
      showMessage(`Could not load study "${KEY}": ${e.message}` + (e.status ? ` (HTTP ${e.status})` : ""), "error", "load");
      return false;
    } finally {
      S.refreshing = false;
      if (S.dirty) {
        S.dirty = false;
        scheduleRefresh();
      }
    }
  }

  function scheduleRefresh(delay = 250) {
    if (S.timer) return;
    S.timer = setTimeout(() => {
      S.timer = null;
      load();
    }, delay);
  }

  function renderAll() {
    renderSummary();
    renderPareto();
    renderSelection();
    renderHistory();
    renderTable();
  }

  function renderSummary() {
    const st = S.study;
    const fact = (label, ...value) => h("div", {}, h("dt", {}, label), h("dd", {}, ...value));
    const best = st.best;
    const search = st.search || {};
    fill($("#summary"),
      fact("State", badge(st.state)),
      fact("Progress", progressCell(st.progress)),
      bestFact(fact, best),
      fact("Hypervolume", fmt(st.hypervolume, 4)),
      fact("Scores on", splitToggle()),
      fact("Search", `${search.method || "?"} · ${search.sampler || search.objective || ""}`.replace(/ · $/, "")),
      fact("Created", dateEl(st.created_at)),
      fact("Updated", dateEl(st.updated_at)),
    );
    const verdict = S.front?.verdict?.text;
    if (verdict) $("#summary").append(h("div", { class: "verdict" }, h("dt", {}, "Verdict"), h("dd", {}, h("pre", { id: "verdict" }, verdict))));
    if (st.error) $("#summary").append(fact("Error", h("span", { class: "muted", title: st.error }, st.error.slice(0, 120))));
    keepFocus($("#study-actions"), () => fill($("#study-actions"), actionButtons(st, () => load())));
  }

  function bestFact(fact, best) {
    // On validation documents: the recommended merge (set-up's best on search documents unless
    // the search's best led it beyond their noise: optimizer/recommend.py) scored on documents it
    // never saw, with its interval and why it was chosen; else the best search-documents objective.
    const pick = S.front?.verdict?.recommended ?? S.front?.verdict?.pick;
    const t = onValidation() && pick !== null && pick !== undefined ? S.byNumber.get(pick) : null;
    const v = t?.validation?.objective;
    const rule = S.front?.verdict?.recommendation?.rule;
    if (v) return fact("Recommended merge (validation)", `${fmt(v.value)} [${fmt(v.lo)}, ${fmt(v.hi)}] (#${t.number} ${t.label})`
      + (rule ? ` (${rule})` : ""));
    return fact("Best score (search docs)", best ? `${fmt(best.objective)} (#${best.trial} ${best.label})` : "–");
  }

  function splitToggle() {
    const has = S.front?.split === "validation" || S.split === "search";
    if (!has) return h("span", { class: "muted", title: "suite.validation is 0: reported scores are optimistic" }, "search documents (no validation split)");
    const btn = (split, text) => h("button", {
      type: "button", class: `seg${S.split === split ? " on" : ""}`, "aria-pressed": S.split === split ? "true" : "false",
      "data-split": split, "data-focus-key": `split:${split}`,
      onclick: () => { if (S.split !== split) { S.split = split; load(); } },
    }, text);
    return h("span", { class: "segmented", role: "group", "aria-label": "Which documents' scores to show" },
      btn("validation", "validation (95% CI)"), btn("search", "search (diagnosis)"));
  }

  // ---------------------------------------------------------------- Pareto plot
  function plottable() {
    return S.trials.filter((t) => t.state === "COMPLETE" && S.tasks.every((k) => Number.isFinite(nz(t, k))));
  }

  function errorBars(t, sx, sy, kx, ky) {
    // 95% intervals on the validation documents: a cross through the point
    const g = s("g", { class: "err-bars", "aria-hidden": "true" });
    const x = sx(nz(t, kx)), y = sy(ky === null ? 0.5 : nz(t, ky));
    // clamped to the panel: an interval wider than the axis runs to its edge
    const clamp = (sc, v) => Math.min(Math.max(v, Math.min(...sc.domain)), Math.max(...sc.domain));
    const cx = ci(t, kx);
    if (cx) g.append(s("line", { class: "err-bar", x1: sx(clamp(sx, cx[0])), x2: sx(clamp(sx, cx[1])), y1: y, y2: y }));
    const cy = ky === null ? null : ci(t, ky);
    if (cy) g.append(s("line", { class: "err-bar", x1: x, x2: x, y1: sy(clamp(sy, cy[0])), y2: sy(clamp(sy, cy[1])) }));
    return g.childNodes.length ? g : null;
  }

  function pointLabel(t) {
    const scores = S.tasks.map((k) => `${k} ${fmt(nz(t, k))}`).join(", ");
    return `Trial ${t.number} ${t.label}: ${scores}` + (S.frontSet.has(t.number) ? ", on the Pareto front" : "");
  }

  function pointGroup(t, x, y, r) {
    const onFront = S.frontSet.has(t.number);
    const kind = kindOf(t);
    const g = s("g", {
      class: `pt${onFront ? " on-front" : ""}${t.number === S.selected ? " selected" : ""}`,
      transform: `translate(${x.toFixed(2)} ${y.toFixed(2)})`,
      "data-trial": t.number, "data-kind": kind, "data-front": onFront ? "1" : null,
      "aria-label": pointLabel(t),
    });
    if (t.number === S.selected) g.append(s("circle", { class: "sel-ring", r: r + 5 }));
    g.append(marker(kind, r));
    g.addEventListener("mouseenter", (ev) => showTip(ev, t));
    g.addEventListener("mousemove", moveTip);
    g.addEventListener("mouseleave", hideTip);
    g.addEventListener("click", () => select(t.number));
    return g;
  }

  function ordered(points) {
    // search first, baselines above, the front above those, the selection on top
    const rank = (t) => (t.number === S.selected ? 3 : S.frontSet.has(t.number) ? 2 : t.kind === "baseline" ? 1 : 0);
    return [...points].sort((a, b) => rank(a) - rank(b) || a.number - b.number);
  }

  function renderPareto() {
    const box = $("#pareto");
    const pts = plottable();
    const k = S.tasks.length;
    box.dataset.plotted = String(pts.length);
    $("#front-count").textContent = `${pts.length} completed trials plotted · ${S.frontSet.size} on the front`
      + (k > 2 ? ` · ${k} tasks: pairwise scatter matrix` : "");
    $("#front-title").textContent = k === 2 ? `Pareto front: ${S.tasks[0]} vs ${S.tasks[1]}` : "Pareto front";
    let svg;
    if (k < 2) svg = paretoSingle(pts);
    else if (k === 2) svg = paretoTwo(pts);
    else svg = paretoMatrix(pts);
    fill(box, svg);
    renderLegend(k);
  }

  function paretoSingle(pts) {
    const W = 640, H = 200;
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `Scores of ${pts.length} trials on ${S.tasks[0] || "one task"}` });
    if (!pts.length) return emptyPlot(svg, W, H);
    const task = S.tasks[0];
    const sx = scale(extent(pts.map((t) => nz(t, task))), [58, W - 16]);
    const sy = scale([0, 1], [H - 48, 14]);
    const g = s("g", { "data-pair": "0-0" });
    axes(g, sx, sy, { xTitle: `${task} (normalized)`, yCount: 1 });
    for (const t of ordered(pts)) {
      const bars = errorBars(t, sx, sy, task, null);
      if (bars) g.append(bars);
      g.append(pointGroup(t, sx(nz(t, task)), sy(0.5), 5));
    }
    svg.append(g);
    return svg;
  }

  function emptyPlot(svg, W, H) {
    svg.append(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" },
      "No completed trials yet: references and baselines come first."));
    return svg;
  }

  function paretoTwo(pts) {
    const W = 640, H = 430;
    const m = { l: 62, r: 18, t: 14, b: 48 };
    const [tx, ty] = S.tasks;
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `Pareto front: ${pts.length} completed trials on ${splitName()}, normalized ${tx} (x) against ${ty} (y); ${S.frontSet.size} on the front. The trials table below has the same data.`,
    });
    if (!pts.length) return emptyPlot(svg, W, H);
    const sx = scale(extent(pts.map((t) => nz(t, tx))), [m.l, W - m.r]);
    const sy = scale(extent(pts.map((t) => nz(t, ty))), [H - m.b, m.t]);
    const g = s("g", { "data-pair": "0-1" });
    axes(g, sx, sy, { xTitle: `${tx} (normalized score)`, yTitle: `${ty} (normalized score)` });
    const clipId = "plot-clip";
    svg.append(s("defs", {}, s("clipPath", { id: clipId },
      s("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b }))));
    const clipped = s("g", { "clip-path": `url(#${clipId})` });
    // 1.0 = as good as the reference (expert or base): a dashed guide where it is in view
    for (const [axis, sc] of [["x", sx], ["y", sy]]) {
      if (sc.domain[0] < 1 && sc.domain[1] > 1) {
        const v = sc(1);
        clipped.append(axis === "x"
          ? s("line", { class: "ref-line", x1: v, x2: v, y1: m.t, y2: H - m.b })
          : s("line", { class: "ref-line", x1: m.l, x2: W - m.r, y1: v, y2: v }));
      }
    }
    const front = pts.filter((t) => S.frontSet.has(t.number))
      .map((t) => [nz(t, tx), nz(t, ty)])
      .sort((a, b) => a[0] - b[0] || b[1] - a[1]);
    if (front.length) {
      const [rx, ry] = (S.front.reference_point || [0, 0]).map(Number);
      const inside = front.filter(([x, y]) => x > rx && y > ry);
      if (inside.length) { // the region the front dominates: its area is the hypervolume
        let d = `M${sx(rx)} ${sy(inside[0][1])}`;
        inside.forEach(([x, y], i) => {
          d += `H${sx(x)}` + (i + 1 < inside.length ? `V${sy(inside[i + 1][1])}` : `V${sy(ry)}`);
        });
        clipped.append(s("path", { class: "dominated", d: d + `H${sx(rx)}Z` }));
      }
      const left = sx.domain[0], bottom = sy.domain[0];
      let d = `M${sx(left)} ${sy(front[0][1])}`;
      front.forEach(([x], i) => {
        d += `H${sx(x)}` + (i + 1 < front.length ? `V${sy(front[i + 1][1])}` : `V${sy(bottom)}`);
      });
      clipped.append(s("path", { class: "front-line", d, "data-front-line": "1" }));
    }
    g.append(clipped);
    const dots = s("g", { class: "points" });
    const spots = new Map(); // baselines that share a spot share one label
    for (const t of ordered(pts)) {
      const x = sx(nz(t, tx)), y = sy(nz(t, ty));
      const bars = errorBars(t, sx, sy, tx, ty);
      if (bars) dots.append(bars);
      dots.append(pointGroup(t, x, y, t.kind === "baseline" ? 5.5 : 4.5));
      if (t.kind === "baseline") {
        const spot = `${Math.round(x)},${Math.round(y)}`;
        if (!spots.has(spot)) spots.set(spot, { x, y, names: [] });
        spots.get(spot).names.push(String(t.label).replace(/^checkpoint:/, ""));
      }
    }
    const labels = s("g", { class: "labels", "aria-hidden": "true" });
    for (const { x, y, names } of spots.values()) {
      const right = x < W - m.r - 150;
      labels.append(s("text", { class: "pt-label", x: right ? x + 9 : x - 9, y: y - 8, "text-anchor": right ? "start" : "end" },
        names.sort().join(", ")));
    }
    g.append(labels, dots);
    svg.append(g);
    return svg;
  }

  function paretoMatrix(pts) {
    const k = S.tasks.length;
    const n = k - 1;
    const W = 640, m = { l: 62, t: 10, b: 50, r: 10 }, gap = 12;
    const cell = (W - m.l - m.r - gap * (n - 1)) / n;
    const cellH = Math.max(110, (430 - m.t - m.b - gap * (n - 1)) / n); // fits 1280x800 up to 4 tasks
    const H = m.t + m.b + n * cellH + gap * (n - 1);
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H.toFixed(0)}`, role: "img",
      "aria-label": `Pairwise scatter matrix of ${pts.length} completed trials on ${splitName()} over ${k} tasks (${S.tasks.join(", ")}); ${S.frontSet.size} on the Pareto front. The trials table below has the same data.`,
    });
    if (!pts.length) return emptyPlot(svg, W, H);
    const ext = S.tasks.map((task) => extent(pts.map((t) => nz(t, task))));
    for (let i = 1; i < k; i += 1) { // row: y = task i
      for (let j = 0; j < i; j += 1) { // column: x = task j
        const x0 = m.l + j * (cell + gap);
        const y0 = m.t + (i - 1) * (cellH + gap);
        const sx = scale(ext[j], [x0, x0 + cell]);
        const sy = scale(ext[i], [y0 + cellH, y0]);
        const g = s("g", { "data-pair": `${j}-${i}` });
        // rows share y scales and columns x scales: tick labels on the outer edges only
        axes(g, sx, sy, {
          xTitle: i === k - 1 ? S.tasks[j] : null, yTitle: j === 0 ? S.tasks[i] : null, xCount: 4, yCount: 3,
          xLabels: i === k - 1, yLabels: j === 0,
        });
        for (const t of ordered(pts)) {
          const bars = S.frontSet.has(t.number) || t.kind === "baseline" ? errorBars(t, sx, sy, S.tasks[j], S.tasks[i]) : null;
          if (bars) g.append(bars);
          g.append(pointGroup(t, sx(nz(t, S.tasks[j])), sy(nz(t, S.tasks[i])), 3.2));
        }
        svg.append(g);
      }
    }
    return svg;
  }

  function renderLegend(k) {
    const sym = (...children) => s("svg", { viewBox: "-9 -7 18 14", "aria-hidden": "true" }, ...children);
    const item = (symbol, text) => h("li", {}, symbol, text);
    const ring = s("g", { class: "on-front" }, marker("search", 4));
    fill($("#legend"),
      item(sym(marker("search", 4)), KIND_NAMES.search),
      item(sym(marker("ckpt", 4)), `${KIND_NAMES.ckpt} (baseline)`),
      item(sym(marker("base", 4)), `${KIND_NAMES.base} (baseline)`),
      item(sym(marker("merge", 4)), `${KIND_NAMES.merge} (uniform, task arithmetic, TIES, DARE-TIES, greedy soup)`),
      item(sym(ring), "On the Pareto front (orange outline)"),
      k === 2 ? item(sym(s("path", { class: "front-line", d: "M-8 -5H0V5H8" })), "Pareto front") : null,
      k === 2 ? item(sym(s("rect", { class: "dominated", x: -8, y: -6, width: 16, height: 12 })), "Dominated region (area = hypervolume)") : null,
      item(sym(s("circle", { class: "sel-ring", r: 5 })), "Selected trial"),
      onValidation() ? item(sym(s("line", { class: "err-bar", x1: -8, x2: 8, y1: 0, y2: 0 }), s("line", { class: "err-bar", x1: 0, x2: 0, y1: -6, y2: 6 })), "95% interval on validation documents") : null,
      k === 2 ? item(sym(s("line", { class: "ref-line", x1: -8, x2: 8, y1: 0, y2: 0 })), "1.0 = as good as the reference model") : null,
      k > 2 ? h("li", { class: "muted" }, `Each panel is one pair of the ${k} tasks (normalized scores); the front is over all ${k}, so a front point can look dominated in one panel.`) : null,
    );
    $("#legend").setAttribute("role", "list");
  }

  // ---------------------------------------------------------------- tooltip
  function showTip(ev, t) {
    const tip = $("#tooltip");
    const band = (k) => { const c = ci(t, k); return c ? ` [${fmt(c[0])}, ${fmt(c[1])}]` : ""; };
    const lines = [`${splitName()}: objective ${fmt(objective(t))}`, ...S.tasks.map((k) => `${k}: ${fmt(nz(t, k))}${band(k)}`)];
    const same = plottable().filter((o) => o.number !== t.number && S.tasks.every((k) => nz(o, k) === nz(t, k)));
    const also = same.slice(0, 6).map((o) => `#${o.number} ${o.label}`).join(", ") + (same.length > 6 ? ` and ${same.length - 6} more` : "");
    fill(tip, h("b", {}, `#${t.number} ${t.label}`),
      h("span", {}, `${KIND_NAMES[kindOf(t)]}${S.frontSet.has(t.number) ? " · on the front" : ""}`),
      lines.map((l) => h("div", {}, l)),
      same.length ? h("div", { class: "also" }, `same scores: ${also}`) : null);
    tip.hidden = false;
    moveTip(ev);
  }

  function moveTip(ev) {
    const tip = $("#tooltip");
    const { innerWidth: vw, innerHeight: vh } = window;
    const w = tip.offsetWidth, hgt = tip.offsetHeight;
    tip.style.left = `${Math.min(ev.clientX + 14, vw - w - 8)}px`;
    tip.style.top = `${Math.min(ev.clientY + 14, vh - hgt - 8)}px`;
  }

  function hideTip() {
    $("#tooltip").hidden = true;
  }

  // ---------------------------------------------------------------- selection
  function select(number) {
    S.selected = number;
    S.userSelected = true;
    history.replaceState(null, "", `#trial=${number}`);
    renderPareto();
    renderSelection();
    for (const tr of document.querySelectorAll("#trials tbody tr")) {
      tr.setAttribute("aria-selected", tr.dataset.trial === String(number) ? "true" : "false");
    }
  }

  function displayWeights(cand) {
    const w = { ...(cand.weights || {}) };
    const total = Object.values(w).reduce((a, b) => a + b, 0);
    const normalized = cand.method === "linear" && cand.normalize !== false && Math.abs(total) > 1e-12;
    if (normalized) for (const key of Object.keys(w)) w[key] /= total;
    return { w, normalized };
  }

  function renderSelection() {
    const t = S.selected === null ? null : S.byNumber.get(S.selected);
    const exportBtn = $("#export");
    if (!t) {
      $("#sel-summary").textContent = "Click a point or a table row.";
      fill($("#weights"));
      fill($("#scores tbody"));
      exportBtn.disabled = true;
      return;
    }
    const cand = t.candidate || {};
    const extras = [];
    if (cand.density !== null && cand.density !== undefined) extras.push(`density ${fmt(cand.density, 2)}`);
    if (cand.method === "task_arithmetic" || (cand.lambda !== undefined && cand.lambda !== 1)) extras.push(`λ ${fmt(cand.lambda ?? 1, 2)}`);
    const { w, normalized } = displayWeights(cand);
    fill($("#sel-summary"),
      h("strong", {}, `#${t.number} ${t.label}`), " ", badge(t.state), " ",
      `${KIND_NAMES[kindOf(t)]} · objective ${fmt(objective(t))} on ${splitName()}`,
      S.frontSet.has(t.number) ? " · on the Pareto front" : "",
      h("br"),
      h("span", { class: "muted" }, `${cand.method || "no candidate"}${extras.length ? " · " + extras.join(" · ") : ""}`
        + (normalized ? " · linear weights normalized to sum 1" : "")),
      t.error ? h("div", { class: "err" }, t.error) : null);
    fill($("#weights"), weightBars(w, normalized));
    // validation scores with their 95% interval; the search documents' score beside, for diagnosis
    const v = t.validation || {};
    const withCi = (e) => (e && Number.isFinite(e.value) ? `${fmt(e.value)} [${fmt(e.lo)}, ${fmt(e.hi)}]` : "–");
    const rows = S.tasks.map((k) => h("tr", {}, h("th", { scope: "row" }, k),
      h("td", { class: "num" }, v.raw?.[k] ? fmt(v.raw[k].value, 4) : "–"), h("td", { class: "num" }, withCi(v.normalized?.[k])),
      h("td", { class: "num muted" }, fmt(t.normalized?.[k]))));
    rows.push(h("tr", { class: "total" }, h("th", { scope: "row" }, "objective (scalarized)"), h("td", {}),
      h("td", { class: "num" }, withCi(v.objective)), h("td", { class: "num muted" }, fmt(t.objective))));
    fill($("#scores tbody"), ...rows);
    exportBtn.disabled = t.state !== "COMPLETE";
    exportBtn.textContent = `Export #${t.number} (.tar.gz)`;
    exportBtn.setAttribute("aria-label", `Export trial ${t.number} as .tar.gz`);
  }

  function weightBars(w, normalized) {
    const names = Object.keys(w);
    const W = 520, row = 24, labelW = 120, valueW = 56;
    const H = Math.max(row * names.length + 26, 40);
    const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Merge weights: " + names.map((n) => `${n} ${fmt(w[n])}`).join(", ") });
    if (!names.length) {
      svg.append(s("text", { class: "empty", x: 8, y: 24 }, "No weights (no candidate stored)."));
      return svg;
    }
    const vals = Object.values(w);
    const lo = Math.min(0, ...vals);
    const hi = Math.max(normalized ? 1 : Math.max(1, ...vals), 0);
    const sx = scale([lo, hi], [labelW, W - valueW]);
    const tk = ticks(lo, hi, 5);
    const tf = tickLabel(tk);
    const axis = s("g", { class: "axis" });
    for (const v of tk) {
      axis.append(s("line", { class: "grid-line", x1: sx(v), x2: sx(v), y1: 4, y2: H - 20 }),
        s("g", { class: "tick" }, s("text", { x: sx(v), y: H - 6, "text-anchor": "middle" }, tf(v))));
    }
    axis.append(s("line", { x1: sx(0), x2: sx(0), y1: 4, y2: H - 20 }));
    svg.append(axis);
    names.forEach((name, i) => {
      const y = 6 + i * row;
      const v = w[name];
      const x0 = sx(Math.min(0, v)), x1 = sx(Math.max(0, v));
      svg.append(s("g", { class: "bar", "data-weight": name, "data-value": v },
        s("text", { x: labelW - 8, y: y + 14, "text-anchor": "end" }, name),
        s("rect", { class: v < 0 ? "bar-rect neg" : "bar-rect", x: x0, y: y + 2, width: Math.max(x1 - x0, 0.5), height: row - 8 }),
        s("text", { class: "bar-value", x: W - valueW + 6, y: y + 14 }, fmt(v))));
    });
    return svg;
  }

  async function exportSelected() {
    const t = S.byNumber.get(S.selected);
    if (!t || t.state !== "COMPLETE") return;
    const url = `${API}/studies/${enc(KEY)}/trials/${t.number}/export`;
    const filename = `${KEY}-trial${t.number}.tar.gz`;
    showMessage(`Exporting trial #${t.number}: the server merges and packs the model, the download starts when it is ready.`, "info");
    if (!PROTECT) { // a plain download: the browser streams the archive to disk
      const a = h("a", { href: url, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      return;
    }
    try { // protected reads: the token must go in a header, so the archive passes through memory
      const r = await fetch(url, { headers: { Authorization: `Bearer ${token.get() || ""}` } });
      if (!r.ok) {
        let detail = r.statusText;
        try { detail = (await r.json()).detail; } catch { /* not JSON */ }
        throw new ApiError(r.status, detail);
      }
      const href = URL.createObjectURL(await r.blob());
      const a = h("a", { href, download: filename, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(href), 60000);
    } catch (e) {
      showMessage(`Export of trial #${t.number} failed: ${e.message}` + (e.status ? ` (HTTP ${e.status})` : ""));
    }
  }

  // ---------------------------------------------------------------- history chart
  function renderHistory() {
    const W = 1200, H = 220, half = W / 2;
    const done = S.trials.filter((t) => t.state === "COMPLETE" && Number.isFinite(t.objective));
    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `Best scalarized score so far over ${done.length} completed trials, and hypervolume after each of ${S.hv.length} front changes.`,
    });
    if (!done.length) {
      fill($("#history"), emptyPlot(svg, W, H));
      return;
    }
    const maxN = Math.max(...S.trials.map((t) => t.number), 1);
    // left: every completed trial's objective (dots) and the running best, in trial-number order
    let best = -Infinity;
    const running = done.map((t) => [t.number, (best = Math.max(best, t.objective))]);
    const m = { l: 66, r: 24, t: 24, b: 44 };
    const sx1 = scale([0, maxN], [m.l, half - m.r]);
    const sy1 = scale(extent(done.map((t) => t.objective)), [H - m.b, m.t]);
    const left = s("g", { "data-chart": "best" });
    axes(left, sx1, sy1, { xTitle: "trial number", yTitle: "scalarized score", xInteger: true });
    left.append(s("text", { class: "chart-title", x: m.l, y: 14 }, "Best score so far"));
    for (const t of done) left.append(s("circle", { class: "obj-dot", cx: sx1(t.number), cy: sy1(t.objective), r: 2.5 }));
    left.append(s("path", { class: "best-line", d: stepPath(running, sx1, sy1, maxN) }));
    // right: the hypervolume the server reported with every front_changed event; a study with none
    // (run by `mergeopt run`) plots the history the server computes from its trials
    const hvPts = S.hv.length ? S.hv.map((p) => [p.trial, p.hv]) : (S.front?.hypervolume_history || []).map((p) => [p[0], p[1]]);
    if (!hvPts.length && S.front) hvPts.push([maxN, S.front.hypervolume]);
    const sx2 = scale([0, maxN], [half + m.l, W - m.r]);
    const sy2 = scale(extent(hvPts.map((p) => p[1]).concat([0]), 0.06, { floor: 0 }), [H - m.b, m.t]);
    const right = s("g", { "data-chart": "hypervolume" });
    axes(right, sx2, sy2, { xTitle: "trial number", yTitle: "hypervolume", xInteger: true });
    right.append(s("text", { class: "chart-title", x: half + m.l, y: 14 }, "Hypervolume on search documents (per front change)"));
    right.append(s("path", { class: "hv-line", d: stepPath(hvPts, sx2, sy2, maxN) }));
    for (const [x, y] of hvPts) right.append(s("circle", { class: "hv-dot", cx: sx2(x), cy: sy2(y), r: 2.5 }));
    svg.append(left, right);
    fill($("#history"), svg);
  }

  function stepPath(points, sx, sy, xEnd) {
    if (!points.length) return "";
    let d = `M${sx(points[0][0])} ${sy(points[0][1])}`;
    for (let i = 1; i < points.length; i += 1) d += `H${sx(points[i][0])}V${sy(points[i][1])}`;
    return d + `H${sx(Math.max(xEnd, points[points.length - 1][0]))}`;
  }

  // ---------------------------------------------------------------- trial table
  function columns() {
    return [
      { key: "number", label: "#", num: true, get: (t) => t.number, show: (t) => String(t.number) },
      { key: "label", label: "Label", get: (t) => t.label, show: (t) => t.label },
      { key: "state", label: "State", get: (t) => t.state, show: (t) => badge(t.state) },
      { key: "validation", label: "Validation (95% CI)", num: true, get: (t) => t.validation?.objective?.value,
        show: (t) => (t.validation?.objective ? `${fmt(t.validation.objective.value)} ±${fmt((t.validation.objective.hi - t.validation.objective.lo) / 2)}` : "") },
      { key: "objective", label: "Search objective", num: true, get: (t) => t.objective, show: (t) => fmt(t.objective) },
      ...S.tasks.map((k) => ({
        key: `task:${k}`, label: `${k} (norm., ${onValidation() ? "valid." : "search"})`, num: true, get: (t) => nz(t, k), show: (t) => fmt(nz(t, k)),
      })),
      { key: "duration", label: "Duration (s)", num: true, get: (t) => t.timings?.total_s, show: (t) => fmt(t.timings?.total_s, 2) },
      { key: "error", label: "Error", get: (t) => t.error, show: (t) => t.error || "" },
    ];
  }

  function sortedTrials(cols) {
    const col = cols.find((c) => c.key === S.sort.key) || cols[0];
    const dir = S.sort.dir;
    const missing = (v) => v === null || v === undefined || (typeof v === "number" && Number.isNaN(v));
    return [...S.trials].sort((a, b) => {
      const va = col.get(a), vb = col.get(b);
      if (missing(va) || missing(vb)) return missing(va) - missing(vb) || a.number - b.number; // blanks last
      const c = typeof va === "number" ? va - vb : String(va).localeCompare(String(vb), undefined, { numeric: true });
      return c * dir || a.number - b.number;
    });
  }

  function renderTable() {
    const cols = columns();
    const head = h("tr", {}, cols.map((c) => h("th", {
      scope: "col", class: c.num ? "num" : null, "data-col": c.key,
      "aria-sort": S.sort.key === c.key ? (S.sort.dir > 0 ? "ascending" : "descending") : "none",
    }, h("button", {
      type: "button", class: "sort", "aria-label": `Sort by ${c.label}`, "data-focus-key": `sort:${c.key}`,
      onclick: () => {
        S.sort = { key: c.key, dir: S.sort.key === c.key ? -S.sort.dir : c.num && c.key !== "number" ? -1 : 1 };
        renderTable();
      },
    }, c.label))));
    keepFocus($("#trials thead"), () => fill($("#trials thead"), head));
    const rows = sortedTrials(cols).map((t) => h("tr", {
      "data-trial": t.number, "data-focus-key": t.number, tabindex: 0, "aria-selected": t.number === S.selected ? "true" : "false",
      onclick: () => select(t.number),
      onkeydown: (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          select(t.number);
        }
      },
    }, cols.map((c) => h("td", {
      class: [c.num ? "num" : "", c.key === "error" && t.error ? "err" : ""].join(" ").trim() || null,
      title: c.key === "error" && t.error ? t.error : null,
    }, c.show(t)))));
    keepFocus($("#trials tbody"), () => fill($("#trials tbody"), rows));
  }

  // ---------------------------------------------------------------- live updates
  function setLive(text) {
    $("#live").textContent = text;
  }

  function onEvent(type, data, id) {
    if (Number.isFinite(id)) {
      if (id <= S.lastEventId) return; // already seen (a replay after a reconnect)
      S.lastEventId = id;
    }
    S.events += 1;
    if (type === "trial_finished") S.lastFinished = data.trial;
    if (type === "front_changed") {
      const trial = S.lastFinished ?? Math.max(0, ...(data.trials || []));
      S.hv.push({ trial, hv: data.hypervolume });
    }
    if (type === "state") S.eventState = data.state;
    setLive(`live · ${S.events} events`);
    scheduleRefresh();
  }

  function finished() {
    return TERMINAL.has(S.eventState || (S.study && S.study.state));
  }

  function streamEnded() {
    if (finished()) {
      setLive(`study ${S.eventState || S.study.state} · ${S.events} events`);
      scheduleRefresh(0);
      return;
    }
    setLive("reconnecting…");
    setTimeout(subscribe, S.retry);
    S.retry = Math.min(S.retry * 2, 15000);
  }

  function subscribe() {
    const follow = !finished();
    const url = `${API}/studies/${enc(KEY)}/events?after=${S.lastEventId}` + (follow ? "" : "&follow=false");
    if (PROTECT) {
      streamWithFetch(url);
      return;
    }
    // EventSource cannot send headers: with open reads (the default) it needs none.
    const es = new EventSource(url);
    es.onopen = () => {
      S.retry = 1000;
      setLive(`live · ${S.events} events`);
    };
    for (const type of EVENT_TYPES) {
      es.addEventListener(type, (ev) => onEvent(type, JSON.parse(ev.data), Number(ev.lastEventId)));
    }
    // The server ends the stream once the study is finished; EventSource would reconnect (with
    // Last-Event-ID, so without replay) and find it ended again: close and decide here.
    es.onerror = () => {
      es.close();
      streamEnded();
    };
  }

  async function streamWithFetch(url) {
    try {
      const r = await fetch(url, { headers: { Accept: "text/event-stream", Authorization: `Bearer ${token.get() || ""}` }, cache: "no-store" });
      if (!r.ok) throw new ApiError(r.status, r.statusText);
      S.retry = 1000;
      setLive(`live · ${S.events} events`);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const f = {};
          for (const line of block.split("\n")) {
            const j = line.indexOf(": ");
            if (j > 0 && !line.startsWith(":")) f[line.slice(0, j)] = line.slice(j + 2);
          }
          if (f.event) onEvent(f.event, JSON.parse(f.data || "{}"), Number(f.id));
        }
      }
    } catch (e) {
      if (e.status === 401 || e.status === 403) {
        showMessage(`Live updates refused: HTTP ${e.status}; set a valid token.`);
        return;
      }
    }
    streamEnded();
  }

  // ------------------------------------------------------------------ start
  function init() {
    renderToken();
    $("#token-set").addEventListener("click", () => askToken());
    $("#token-cancel").addEventListener("click", () => $("#token-dialog").close("cancel"));
    $("#token-forget").addEventListener("click", () => {
      token.clear();
      hideMessage();
    });
    $("#message").addEventListener("click", () => hideMessage());
    if (body.dataset.page === "studies") studiesPage();
    else if (body.dataset.page === "study") studyPage();
  }

  window.mergeoptDashboard = { state: S };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
