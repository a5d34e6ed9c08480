/* The vrft dashboard: vanilla JavaScript over the /v1 API, with the API key the user signs in with (kept in
 * sessionStorage). Routes live in the URL's hash: #/ (jobs), #/jobs/ID/TAB, #/playground.
 * Charts are hand-written SVG; each plotted series carries its points in `data-points` (JSON [[step, value]]),
 * which is what the browser tests compare with the events API. */
"use strict";

const KEY = "vrft.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 3000;
const COLORS = ["#2f6fdb", "#e0338a", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#65a30d", "#9333ea"];
let pollTimer = null;
let renderToken = 0; // a newer page render makes an older one's late answers no-ops

// ------------------------------------------------------------------ DOM and HTTP helpers

function h(tag, attrs, ...children) {
  const ns = tag.startsWith("svg:") ? "http://www.w3.org/2000/svg" : null;
  const el = ns ? document.createElementNS(ns, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "style") el.style.cssText = v; // through the CSSOM: the CSP allows no inline style attributes
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const svg = (tag, attrs, ...children) => h("svg:" + tag, attrs, ...children);
const app = () => document.getElementById("app");
const key = () => sessionStorage.getItem(KEY);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const headers = { Authorization: "Bearer " + key() };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch("/v1" + path, {
    method: opts.method || "GET", headers, body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
  });
  if (resp.status === 401 && !opts.signIn) {
    signOut("Your API key was refused; sign in again.");
    throw new ApiError(401, null);
  }
  if (opts.text) {
    if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
    return resp.text();
  }
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

/** `api` again while the server answers 503 with Retry-After (a model that is starting), for up to `seconds`. */
async function apiWaiting(path, opts, seconds, onWait) {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    try {
      return await api(path, opts);
    } catch (e) {
      if (e.status !== 503 || Date.now() > until) throw e;
      if (onWait) onWait(e.message);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? "?" + s : "";
}

/** Every item of a cursor-paged list. */
async function listAll(path, params = {}, max = 100000) {
  const out = [];
  let after = null;
  for (;;) {
    const page = await api(path + qs({ ...params, after, limit: params.limit || 1000 }));
    out.push(...page.data);
    if (!page.has_more || !page.data.length || out.length >= max) return out;
    after = page.data[page.data.length - 1].id;
  }
}

const fmt = (v, d = 4) => (v === null || v === undefined ? "—" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : String(v));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "—");
const get = (obj, path) => path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);

function errorBox(e) {
  return h("p", { class: "error", role: "alert" }, e instanceof Error ? e.message : String(e));
}

// ------------------------------------------------------------------ sign-in and routing

function signOut(message) {
  sessionStorage.removeItem(KEY);
  location.hash = "#/";
  renderSignIn(message);
}

function renderSignIn(message) {
  clearTimeout(pollTimer);
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = h("input", { id: "api-key", type: "password", placeholder: "sk-...", autocomplete: "off" });
  const status = h("p", { id: "sign-in-error", class: "error", role: "alert" }, message || "");
  const form = h("form", { class: "card signin", id: "sign-in-form" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key. The dashboard shows the jobs, files and models of that key's project; " +
      "the key stays in this browser tab (sessionStorage)."),
    input, h("button", { class: "primary", id: "sign-in", type: "submit" }, "Sign in"), status);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const k = input.value.trim();
    if (!k) return;
    sessionStorage.setItem(KEY, k);
    try {
      await api("/fine_tuning/jobs?limit=1", { signIn: true });
    } catch (e) {
      sessionStorage.removeItem(KEY);
      status.textContent = e.status === 401 ? "That API key was refused." : e.message;
      return;
    }
    route();
  });
  app().replaceChildren(form);
  input.focus();
}

function route() {
  clearTimeout(pollTimer);
  renderToken += 1;
  if (!key()) return renderSignIn();
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("who").textContent = "key …" + key().slice(-4);
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "jobs" && parts[1]) return renderJob(parts[1], parts[2] || "overview", renderToken);
  if (parts[0] === "playground") return renderPlayground(renderToken);
  return renderJobs(renderToken);
}

// ------------------------------------------------------------------ jobs list

function progressOf(job, metrics) {
  if (job.status === "succeeded") return 1;
  if (!metrics) return 0;
  const total = metrics.data.total_steps;
  return total ? Math.min(1, metrics.data.step / total) : 0;
}

async function renderJobs(token) {
  const body = h("tbody", {});
  const more = h("button", { id: "more-jobs", hidden: true }, "Load more");
  const root = h("div", {}, h("h1", {}, "Fine-tuning jobs"),
    h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, ["Job", "Model", "Method", "Status", "Progress", "Created", "Fine-tuned model"]
      .map((t) => h("th", {}, t)))), body), more);
  app().replaceChildren(root);
  let after = null;
  const load = async () => {
    let page;
    try {
      page = await api("/fine_tuning/jobs" + qs({ limit: 20, after }));
    } catch (e) {
      root.append(errorBox(e));
      return;
    }
    if (token !== renderToken) return;
    if (!page.data.length && !after) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet.")));
    for (const job of page.data) {
      const bar = h("span", { style: "width:0%" });
      const label = h("span", { class: "muted progress-label" }, "");
      const row = h("tr", { "data-job-id": job.id, "data-status": job.status },
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
        h("td", {}, job.model), h("td", {}, (job.method && job.method.type) || "supervised"),
        h("td", {}, h("span", { class: "status " + job.status }, job.status)),
        h("td", {}, h("span", { class: "progress" }, bar), " ", label),
        h("td", {}, when(job.created_at)), h("td", {}, job.fine_tuned_model || "—"));
      body.append(row);
      api(`/fine_tuning/jobs/${encodeURIComponent(job.id)}/events?limit=50`).then((evs) => {
        const m = evs.data.find((e) => e.type === "metrics");
        const p = progressOf(job, m);
        bar.style.width = (100 * p).toFixed(1) + "%";
        row.dataset.progress = p.toFixed(4);
        label.textContent = m ? `step ${m.data.step}/${m.data.total_steps || "?"}` : (job.status === "succeeded" ? "done" : "");
      }).catch(() => {});
    }
    after = page.data.length ? page.data[page.data.length - 1].id : after;
    more.hidden = !page.has_more;
  };
  more.addEventListener("click", load);
  await load();
  if (token === renderToken) pollTimer = setTimeout(() => token === renderToken && route(), 10 * POLL_MS);
}

// ------------------------------------------------------------------ job page

const TABS = [["overview", "Curves"], ["events", "Events"], ["checkpoints", "Checkpoints"], ["rollouts", "Rollouts"],
  ["compare", "Compare"]];

/** A job's page data, fetched once and kept up to date by polling while the job runs. */
class JobState {
  constructor(id) { this.id = id; this.events = []; this.seen = new Set(); }
  async refresh() {
    this.job = await api(`/fine_tuning/jobs/${encodeURIComponent(this.id)}`);
    // events come newest first: read pages until one already seen
    const fresh = [];
    let after = null;
    for (;;) {
      const page = await api(`/fine_tuning/jobs/${encodeURIComponent(this.id)}/events` + qs({ limit: 1000, after }));
      let known = false;
      for (const e of page.data) {
        if (this.seen.has(e.id)) { known = true; break; }
        fresh.push(e);
      }
      if (known || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    for (const e of fresh) this.seen.add(e.id);
    this.events = fresh.concat(this.events); // newest first
    this.checkpoints = await listAll(`/fine_tuning/jobs/${encodeURIComponent(this.id)}/checkpoints`, { limit: 100 });
    return fresh.length;
  }
  /** Metrics events, one per step (the first report of a step), by step. */
  metrics() {
    const byStep = new Map();
    for (const e of [...this.events].reverse()) if (e.type === "metrics" && e.data && !byStep.has(e.data.step)) byStep.set(e.data.step, e.data);
    return [...byStep.values()].sort((a, b) => a.step - b.step);
  }
  get isRft() { return ((this.job.method || {}).type) === "reinforcement"; }
  get grader() { return this.isRft ? this.job.method.reinforcement.grader : null; }
  /** What the IoU graders' input_format "auto" means for this job's model: the convention the trainer resolved (the
   * data.box_convention of its start message), so boxes are drawn as the model meant them. */
  get boxConvention() {
    const start = this.events.find((e) => e.data && e.data.box_convention);
    return start ? start.data.box_convention : null;
  }
}

async function renderJob(id, tab, token) {
  const state = new JobState(id);
  try {
    await state.refresh();
  } catch (e) {
    app().replaceChildren(h("h1", {}, "Job " + id), errorBox(e.status === 404 ? new Error("No such job in this project.") : e));
    return;
  }
  if (token !== renderToken) return;
  const head = h("div", { id: "job-head" });
  const pane = h("div", { id: "job-pane" });
  const tabs = h("nav", { class: "tabs" }, TABS.filter(([t]) => state.isRft || !["rollouts", "compare"].includes(t)).map(([t, name]) =>
    h("a", { href: `#/jobs/${encodeURIComponent(id)}/${t}`, class: t === tab ? "active" : null, "data-tab": t }, name)));
  app().replaceChildren(head, tabs, pane);
  const draw = (first) => {
    renderJobHead(head, state, token, () => draw(false));
    if (tab === "overview") renderCurves(pane, state);
    else if (tab === "events") renderEvents(pane, state);
    else if (tab === "checkpoints") renderCheckpoints(pane, state);
    else if (first && tab === "rollouts") renderRollouts(pane, state, token);
    else if (first && tab === "compare") renderCompare(pane, state, token);
  };
  draw(true);
  const poll = async () => {
    if (token !== renderToken) return;
    if (!TERMINAL.has(state.job.status)) {
      try {
        const before = state.job.status;
        const n = await state.refresh();
        if (token !== renderToken) return;
        if (n || state.job.status !== before) draw(false);
      } catch (e) { /* a missed poll: the next one tries again */ }
    }
    if (token === renderToken && !TERMINAL.has(state.job.status)) pollTimer = setTimeout(poll, POLL_MS);
  };
  pollTimer = setTimeout(poll, POLL_MS);
}

function renderJobHead(root, state, token, redraw) {
  const j = state.job;
  const act = (name) => h("button", {
    id: name, class: name === "cancel" ? "danger" : null,
    disabled: !({ cancel: !TERMINAL.has(j.status), pause: j.status === "running", resume: j.status === "paused" })[name],
    onclick: async (ev) => {
      if (name === "cancel" && !confirm(`Cancel job ${j.id}?`)) return;
      ev.target.disabled = true;
      try {
        state.job = await api(`/fine_tuning/jobs/${encodeURIComponent(j.id)}/${name}`, { method: "POST" });
        await state.refresh();
      } catch (e) {
        root.append(errorBox(e));
        return;
      }
      if (token === renderToken) redraw();
    },
  }, name[0].toUpperCase() + name.slice(1));
  const last = state.metrics().slice(-1)[0];
  const p = progressOf(j, last ? { data: last } : null);
  root.replaceChildren(
    h("h1", {}, "Job ", h("code", {}, j.id), " ", h("span", { class: "status " + j.status, id: "job-status", "data-status": j.status }, j.status)),
    h("dl", { class: "meta" },
      h("dt", {}, "Model"), h("dd", {}, j.model),
      h("dt", {}, "Method"), h("dd", {}, (j.method && j.method.type) || "supervised"),
      h("dt", {}, "Progress"), h("dd", {}, h("span", { class: "progress" }, h("span", { style: `width:${(100 * p).toFixed(1)}%` })),
        " ", last ? `step ${last.step}/${last.total_steps || "?"}` : ""),
      h("dt", {}, "Created"), h("dd", {}, when(j.created_at)),
      h("dt", {}, "Finished"), h("dd", {}, when(j.finished_at)),
      h("dt", {}, "Fine-tuned model"), h("dd", {}, j.fine_tuned_model || "—"),
      j.error && j.error.message ? [h("dt", {}, "Error"), h("dd", { class: "error" }, j.error.message)] : null),
    h("div", { class: "actions" }, act("cancel"), act("pause"), act("resume")));
}

// ------------------------------------------------------------------ curves

/** The charts of a job: [{id, title, series: [{name, points: [[step, value]]}]}]; series with no point dropped. */
function chartSpecs(state) {
  const ms = state.metrics();
  const series = (name, f) => ({ name, points: ms.map((m) => [m.step, f(m)]).filter(([, v]) => typeof v === "number") });
  const charts = [];
  if (state.isRft) {
    const names = [];
    for (const m of ms) for (const g of get(m, "scores.graders") || []) if (!names.includes(g.name)) names.push(g.name);
    const grader = (split, name) => (m) => {
      const g = (get(m, "scores.graders") || []).find((x) => x.name === name);
      return g ? g[`${split}_reward_mean`] : undefined;
    };
    charts.push({ id: "reward", title: "Reward", series: [
      series("train_reward_mean", (m) => get(m, "scores.train_reward_mean")),
      series("valid_reward_mean", (m) => get(m, "scores.valid_reward_mean"))] });
    charts.push({ id: "reward_by_grader", title: "Reward by grader", series: names.flatMap((n) => [
      series(`train:${n}`, grader("train", n)), series(`valid:${n}`, grader("valid", n))]) });
    for (const [id, title, keys] of [
      ["kl", "KL to the reference", ["train.kl"]],
      ["clip_ratio", "Clip ratio", ["train.clip_ratio"]],
      ["frac_reward_zero_std", "Zero-variance groups (fraction)", ["train.frac_reward_zero_std"]],
      ["completion_length", "Completion length (tokens)", ["train.completion_length_mean", "train.completion_length_max"]],
      ["learning_rate", "Learning rate", ["train.learning_rate"]],
      ["reward_std", "Reward std", ["train.reward_std", "train.reward_std_within_groups"]],
      ["loss", "Policy loss", ["train.loss"]],
      ["truncated_ratio", "Truncated completions (fraction)", ["train.truncated_ratio"]],
    ]) charts.push({ id, title, series: keys.map((k) => series(k, (m) => get(m, k))) });
  } else {
    for (const [id, title, keys] of [
      ["loss", "Loss", ["train_loss", "valid_loss", "full_valid_loss"]],
      ["accuracy", "Token accuracy", ["train_mean_token_accuracy", "valid_mean_token_accuracy", "full_valid_mean_token_accuracy"]],
      ["reward_margin", "DPO reward margin", ["train_reward_margin", "valid_reward_margin", "full_valid_reward_margin"]],
      ["reward_accuracy", "DPO reward accuracy", ["train_reward_accuracy", "valid_reward_accuracy", "full_valid_reward_accuracy"]],
      ["learning_rate", "Learning rate", ["learning_rate"]],
    ]) charts.push({ id, title, series: keys.map((k) => series(k, (m) => get(m, k))) });
  }
  for (const c of charts) c.series = c.series.filter((s) => s.points.length);
  return charts.filter((c) => c.series.length);
}

function niceTicks(lo, hi, n = 4) {
  if (lo === hi) { lo -= Math.abs(lo) * 0.1 || 1; hi += Math.abs(hi) * 0.1 || 1; }
  const step0 = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= step0);
  const a = Math.floor(lo / step) * step, b = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = a; v <= b + step / 2; v += step) ticks.push(+v.toPrecision(10));
  return { lo: a, hi: b, ticks };
}

function lineChart(spec) {
  const W = 440, H = 200, L = 54, R = 10, T = 8, B = 26;
  const all = spec.series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y = niceTicks(Math.min(...ys), Math.max(...ys));
  const sx = (v) => L + (x1 === x0 ? (W - L - R) / 2 : ((v - x0) / (x1 - x0)) * (W - L - R));
  const sy = (v) => T + (1 - (v - y.lo) / (y.hi - y.lo)) * (H - T - B);
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": spec.title });
  for (const t of y.ticks) {
    g.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(t), y2: sy(t) }));
    g.append(svg("text", { x: L - 4, y: sy(t) + 3, "text-anchor": "end" }, Math.abs(t) < 1e-3 && t !== 0 ? t.toExponential(1) : +t.toPrecision(4)));
  }
  const steps = [...new Set(xs)].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(steps.length / 8));
  steps.filter((_, i) => i % every === 0).forEach((s) => g.append(svg("text", { x: sx(s), y: H - B + 14, "text-anchor": "middle" }, s)));
  g.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  g.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  g.append(svg("text", { x: W - R, y: H - 2, "text-anchor": "end" }, "step"));
  spec.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const d = s.points.map(([a, b], k) => `${k ? "L" : "M"}${sx(a).toFixed(2)},${sy(b).toFixed(2)}`).join(" ");
    const grp = svg("g", { class: "series", "data-series": s.name, "data-points": JSON.stringify(s.points) },
      svg("path", { d, fill: "none", stroke: color, "stroke-width": 1.8 }),
      s.points.map(([a, b]) => svg("circle", { cx: sx(a).toFixed(2), cy: sy(b).toFixed(2), r: 2.6, fill: color },
        svg("title", {}, `${s.name} step ${a}: ${fmt(b, 6)}`))));
    g.append(grp);
  });
  return h("figure", { class: "chart", "data-chart": spec.id },
    h("figcaption", {}, spec.title), g,
    h("div", { class: "legend" }, spec.series.map((s, i) => h("span", {}, h("i", { style: `background:${COLORS[i % COLORS.length]}` }), s.name))));
}

function renderCurves(pane, state) {
  const charts = chartSpecs(state);
  const last = state.metrics().slice(-1)[0];
  pane.replaceChildren(
    charts.length ? h("div", { class: "charts", id: "charts", "data-steps": state.metrics().length }, charts.map(lineChart))
      : h("p", { class: "muted", id: "charts" }, "No metrics yet: the curves appear with the first training step."),
    last ? h("p", { class: "muted" }, `Last step ${last.step}` + (TERMINAL.has(state.job.status) ? "" : " — updating every few seconds")) : null);
}

// ------------------------------------------------------------------ events and checkpoints

function renderEvents(pane, state) {
  pane.replaceChildren(h("table", { class: "events", id: "events" },
    h("thead", {}, h("tr", {}, ["Time", "Level", "Type", "Message"].map((t) => h("th", {}, t)))),
    h("tbody", {}, state.events.map((e) => h("tr", { "data-event-id": e.id },
      h("td", {}, when(e.created_at)), h("td", { class: "level-" + e.level }, e.level), h("td", {}, e.type || "message"),
      h("td", {}, e.message))))));
}

/** The checkpoint metric to rank by and whether higher is better. */
function bestMetric(ckpts) {
  for (const [k, up] of [["valid_reward_mean", true], ["full_valid_loss", false], ["valid_loss", false],
    ["train_reward_mean", true], ["train_loss", false]]) {
    if (ckpts.some((c) => typeof c.metrics[k] === "number")) return [k, up];
  }
  return [null, true];
}

function renderCheckpoints(pane, state) {
  const ckpts = [...state.checkpoints].sort((a, b) => a.step_number - b.step_number);
  if (!ckpts.length) return pane.replaceChildren(h("p", { class: "muted", id: "checkpoints" }, "No checkpoints yet."));
  const [metric, up] = bestMetric(ckpts);
  const scored = ckpts.filter((c) => typeof c.metrics[metric] === "number");
  const best = scored.length ? scored.reduce((a, b) => ((up ? b.metrics[metric] > a.metrics[metric] : b.metrics[metric] < a.metrics[metric]) ? b : a)) : null;
  const keys = [...new Set(ckpts.flatMap((c) => Object.keys(c.metrics).filter((k) => k !== "step")))].sort();
  pane.replaceChildren(
    metric ? h("p", { class: "muted" }, `Best by ${metric} (${up ? "highest" : "lowest"}), marked ★.`) : null,
    h("table", { id: "checkpoints" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "Step"), h("th", {}, "Checkpoint"), keys.map((k) => h("th", { class: "num" }, k)))),
      h("tbody", {}, ckpts.map((c) => h("tr", { class: c === best ? "best" : null, "data-step": c.step_number, "data-best": c === best ? "true" : null },
        h("td", { class: "star" }, c === best ? "★" : ""), h("td", { class: "num" }, c.step_number),
        h("td", {}, h("code", {}, c.fine_tuned_model_checkpoint)),
        keys.map((k) => h("td", { class: "num" }, fmt(c.metrics[k]))))))));
}

// ------------------------------------------------------------------ boxes (the grader's: POST /files/{id}/boxes)

const boxQueue = new Map();
/** The boxes each iou grader of `spec` compares on line `line` of a file, for `sample` (null: the references
 * only), in fractions of the row's image: [{grader, reference: [box], predicted: [{box, confidence}], error}].
 * The server computes them with the grader's own parsing and conventions (grader/types/iou.py, drawn_boxes), so
 * what is drawn is what was scored. Asks made in the same tick for one file, grader and convention go as one
 * request. */
function boxesOf(fileId, line, sample, spec, convention) {
  const key = JSON.stringify([fileId, spec, convention || null]);
  let batch = boxQueue.get(key);
  if (!batch) {
    batch = { fileId, spec, convention: convention || null, rows: [], waiters: [] };
    boxQueue.set(key, batch);
    setTimeout(() => { boxQueue.delete(key); sendBoxes(batch); }, 0);
  }
  return new Promise((resolve, reject) => { batch.rows.push({ line, sample }); batch.waiters.push({ resolve, reject }); });
}

async function sendBoxes(batch) {
  const MAX_ROWS = 500;  // the endpoint's limit
  for (let i = 0; i < batch.rows.length; i += MAX_ROWS) {
    const rows = batch.rows.slice(i, i + MAX_ROWS), waiters = batch.waiters.slice(i, i + MAX_ROWS);
    try {
      const r = await api(`/files/${encodeURIComponent(batch.fileId)}/boxes`, { method: "POST",
        body: { grader: batch.spec, rows, box_convention: batch.convention } });
      r.data.forEach((d, k) => waiters[k].resolve(d.graders));
    } catch (e) {
      waiters.forEach((w) => w.reject(e));
    }
  }
}

function firstImage(row) {
  for (const m of (row && row.messages) || []) {
    if (!Array.isArray(m.content)) continue;
    for (const part of m.content) if (part && part.type === "image_url") return (part.image_url || {}).url || null;
  }
  return null;
}

/** An image with the reference boxes of line `line` of file `fileId` (its `row`) and a completion's boxes (null:
 * none) drawn over it (SVG), as the iou graders of `spec` read them; `convention`: what their input_format "auto"
 * means (a job's model family's). */
function boxFigure(row, fileId, line, completion, spec, convention = null) {
  const url = firstImage(row);
  const fig = h("div", { class: "figure" });
  if (!url || !/^(data:image\/|https?:|\/)/.test(url)) {
    fig.append(h("p", { class: "muted" }, url ? "The row's image is not viewable here." : "No image in this row."));
    return fig;
  }
  const img = h("img", { src: url, alt: "the prompt's image" });
  fig.append(img);
  const wrap = h("div", {}, fig);  // notes go under the figure: its SVG covers all of it
  const draw = (graders) => {
    const W = img.naturalWidth, H = img.naturalHeight;
    const size = Array.isArray(row.image_size) && row.image_size.length === 2 ? row.image_size.map(Number) : [W, H];
    const over = svg("svg", { class: "boxes", viewBox: `0 0 ${size[0]} ${size[1]}`, preserveAspectRatio: "none",
      "data-image-size": JSON.stringify(size) });
    const rect = (cls, f, label) => {
      const b = [f[0] * size[0], f[1] * size[1], f[2] * size[0], f[3] * size[1]];
      return svg("rect", { class: cls, x: b[0], y: b[1], width: Math.max(0, b[2] - b[0]), height: Math.max(0, b[3] - b[1]),
        "data-box": JSON.stringify(b.map((v) => +v.toFixed(4))) }, svg("title", {}, label));
    };
    for (const g of graders) {
      for (const b of g.reference) over.append(rect("ref-box", b, `reference (${g.grader})`));
      for (const p of g.predicted) over.append(rect("pred-box", p.box, `predicted (${g.grader}) conf ${p.confidence}`));
    }
    fig.append(over);
    const errors = graders.filter((g) => g.error && (completion !== null || !g.reference.length)).map((g) => `${g.grader}: ${g.error}`);
    if (errors.length) wrap.append(h("p", { class: "muted box-error" }, errors.join("; ")));
    fig.dataset.refBoxes = over.querySelectorAll(".ref-box").length;
    fig.dataset.predBoxes = over.querySelectorAll(".pred-box").length;
    fig.dataset.drawn = "true";
  };
  const loaded = new Promise((resolve, reject) => {
    if (img.complete && img.naturalWidth) return resolve();
    img.addEventListener("load", resolve, { once: true });
    // an http(s) image elsewhere: the page's Content-Security-Policy loads images from this server only
    img.addEventListener("error", () => reject(new Error(/^https?:/.test(url)
      ? `the image at ${url} is not on this server (the dashboard shows data: URL images only)` : "the image does not load")), { once: true });
  });
  const boxes = spec && fileId && line ? boxesOf(fileId, line, completion, spec, convention) : Promise.resolve([]);
  Promise.all([boxes, loaded]).then(([graders]) => draw(graders)).catch((e) => {
    wrap.append(h("p", { class: "error" }, "The boxes could not be drawn: " + e.message));
    fig.dataset.drawn = "error";
  });
  return wrap;
}

// ------------------------------------------------------------------ rollout inspector

const ROWS_PER_REQUEST = 100;  // GET /files/{id}/rows answers at most this many
const rowCache = new Map();  // "fileId:line" -> Promise of the row
/** The rows at these lines of a file (1-based, as the records' `line`), Map line -> row: read with
 *  GET /files/{id}/rows, each line once a page, never the whole file (a dataset may be gigabytes). */
async function rowsAt(fileId, lines) {
  const key = (n) => fileId + ":" + n;
  const wanted = [...new Set(lines.filter((n) => Number.isInteger(n)))];
  const missing = wanted.filter((n) => !rowCache.has(key(n)));
  for (let i = 0; i < missing.length; i += ROWS_PER_REQUEST) {
    const chunk = missing.slice(i, i + ROWS_PER_REQUEST);
    const got = api(`/files/${encodeURIComponent(fileId)}/rows?` + chunk.map((n) => "line=" + n).join("&"))
      .then((b) => new Map(b.data.map((d) => [d.line, d.row])));
    for (const n of chunk) rowCache.set(key(n), got.then((m) => m.get(n)).catch((e) => { rowCache.delete(key(n)); throw e; }));
  }
  const rows = await Promise.all(wanted.map((n) => rowCache.get(key(n))));
  return new Map(wanted.map((n, i) => [n, rows[i]]));
}

/** The first `n` rows of a file, [[line, row]], a page of GET /files/{id}/rows at a time. */
async function firstRows(fileId, n) {
  const out = [];
  for (let after = 0; out.length < n;) {
    const page = await api(`/files/${encodeURIComponent(fileId)}/rows${qs({ after, limit: Math.min(ROWS_PER_REQUEST, n - out.length) })}`);
    out.push(...page.data.map((d) => [d.line, d.row]));
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].line;
  }
  return out;
}

function graderNames(spec) {
  if (!spec) return [];
  if (spec.type === "multi" && spec.graders && !spec.graders.type) {
    return Array.isArray(spec.graders) ? spec.graders.map((g) => g.name).sort() : Object.keys(spec.graders).sort();
  }
  return spec.name ? [spec.name] : [];
}

function scoreChip(name, v) {
  return h("span", { class: "score" + (v === 0 ? " zero" : v === 1 ? " one" : ""), "data-grader": name, "data-score": v === null ? "null" : v },
    `${name} ${fmt(v, 3)}`);
}

function rolloutCard(r, row, spec, convention) {
  return h("div", { class: "rollout", "data-rollout-id": r.id, "data-step": r.step, "data-split": r.split, "data-line": r.line,
    "data-reward": r.reward === null ? "null" : r.reward },
  h("div", {}, row ? boxFigure(row, r.file_id, r.line, r.completion, spec, convention) : h("p", { class: "muted" }, "The prompt's row is not readable."),
    h("div", { class: "box-legend" }, h("span", { class: "r" }, "■ reference"), " ", h("span", { class: "p" }, "▭ predicted"))),
  h("div", {},
    h("div", { class: "muted" }, `${r.split} · step ${r.step} · line ${r.line ?? "?"} · group ${r.group} · sample ${r.sample} · ` +
      `${r.completion_tokens} tokens${r.truncated ? " · truncated" : ""}`),
    h("pre", { class: "completion" }, r.completion),
    h("div", { class: "scores" },
      h("span", { class: "score reward", "data-score": r.reward === null ? "null" : r.reward }, `reward ${fmt(r.reward, 3)}`),
      Object.entries(r.sub_rewards).map(([k, v]) => scoreChip(k, v)),
      h("span", { class: "score advantage", "data-advantage": r.advantage === null ? "null" : r.advantage }, `advantage ${fmt(r.advantage, 3)}`)),
    r.errors.length || r.error_message ? h("p", { class: "error" }, [r.errors.join(", "), r.error_message].filter(Boolean).join(": ")) : null));
}

const SORTS = {
  "reward-desc": (a, b) => (b.reward ?? -Infinity) - (a.reward ?? -Infinity),
  "reward-asc": (a, b) => (a.reward ?? Infinity) - (b.reward ?? Infinity),
  "advantage-desc": (a, b) => (b.advantage ?? -Infinity) - (a.advantage ?? -Infinity),
  "advantage-asc": (a, b) => (a.advantage ?? Infinity) - (b.advantage ?? Infinity),
  "step": (a, b) => a.step - b.step || a.group - b.group || a.sample - b.sample,
  "tokens-desc": (a, b) => b.completion_tokens - a.completion_tokens,
};

/** Whether a record passes the inspector's filters: {graders: {name: [min, max]}, reward: [min, max], errors, truncated}. */
function passes(r, f) {
  const within = (v, [lo, hi]) => (lo === null || (v !== null && v >= lo)) && (hi === null || (v !== null && v <= hi));
  if (!within(r.reward, f.reward)) return false;
  for (const [name, range] of Object.entries(f.graders)) if (!within(r.sub_rewards[name] ?? null, range)) return false;
  if (f.errors && !r.errors.length) return false;
  if (f.truncated && !r.truncated) return false;
  return true;
}

async function renderRollouts(pane, state, token) {
  const jobPath = `/fine_tuning/jobs/${encodeURIComponent(state.id)}/rollouts`;
  const spec = state.grader;
  const names = graderNames(spec);
  const steps = [...new Set(state.metrics().map((m) => m.step))];
  const num = (id, ph) => h("input", { type: "number", step: "any", id, placeholder: ph });
  const split = h("select", { id: "f-split" }, h("option", { value: "" }, "all"), h("option", { value: "train" }, "train"),
    h("option", { value: "validation" }, "validation"));
  const step = h("select", { id: "f-step" }, h("option", { value: "" }, "all steps"), steps.map((s) => h("option", { value: s }, `step ${s}`)));
  const sort = h("select", { id: "f-sort" }, Object.keys(SORTS).map((k) => h("option", { value: k }, k)));
  const fields = names.map((n) => h("fieldset", { "data-grader": n }, h("legend", {}, n),
    num(`f-min-${n}`, "min"), " – ", num(`f-max-${n}`, "max")));
  const rewardRange = h("fieldset", {}, h("legend", {}, "reward"), num("f-min-reward", "min"), " – ", num("f-max-reward", "max"));
  const errors = h("input", { type: "checkbox", id: "f-errors" });
  const truncated = h("input", { type: "checkbox", id: "f-truncated" });
  const fmtName = names.find((n) => /format/i.test(n)), iouName = names.find((n) => n !== fmtName && /iou|task|box|det|ground/i.test(n));
  const preset = fmtName && iouName ? h("button", { id: "preset-format-no-iou", type: "button" }, `${fmtName} = 1 but ${iouName} = 0`) : null;
  const count = h("p", { class: "muted", id: "rollout-count" });
  const list = h("div", { class: "rollouts", id: "rollouts" });
  pane.replaceChildren(h("div", { class: "filters card" },
    h("label", {}, "Split ", split), h("label", {}, "Step ", step), h("label", {}, "Sort ", sort),
    rewardRange, fields, h("label", {}, errors, " with errors"), h("label", {}, truncated, " truncated"), preset), count, list);

  let records = [];
  const val = (id) => { const v = document.getElementById(id).value; return v === "" ? null : Number(v); };
  const show = async () => {
    const f = { reward: [val("f-min-reward"), val("f-max-reward")], graders: {}, errors: errors.checked, truncated: truncated.checked };
    for (const n of names) f.graders[n] = [val(`f-min-${n}`), val(`f-max-${n}`)];
    const shown = records.filter((r) => passes(r, f)).sort(SORTS[sort.value]);
    count.textContent = `${shown.length} of ${records.length} records`;
    count.dataset.shown = shown.length;
    count.dataset.total = records.length;
    const cap = shown.slice(0, 200);
    const rows = new Map();
    for (const fid of new Set(cap.map((r) => r.file_id).filter(Boolean))) {
      try { rows.set(fid, await rowsAt(fid, cap.filter((r) => r.file_id === fid).map((r) => r.line))); } catch (e) { rows.set(fid, new Map()); }
    }
    if (token !== renderToken) return;
    list.replaceChildren(...cap.map((r) => rolloutCard(r, (rows.get(r.file_id) || new Map()).get(r.line), spec, state.boxConvention)));
    list.dataset.ready = "true";
  };
  const load = async () => {
    list.dataset.ready = "false";
    try {
      records = await listAll(jobPath, { split: split.value, step: step.value, limit: 1000 });
    } catch (e) {
      list.replaceChildren(errorBox(e));
      return;
    }
    if (token !== renderToken) return;
    await show();
  };
  split.addEventListener("change", load);
  step.addEventListener("change", load);
  for (const el of [sort, errors, truncated]) el.addEventListener("change", show);
  pane.querySelectorAll("input[type=number]").forEach((el) => el.addEventListener("input", show));
  if (preset) preset.addEventListener("click", () => {
    document.getElementById(`f-min-${fmtName}`).value = 1;
    document.getElementById(`f-max-${iouName}`).value = 0;
    show();
  });
  await load();
}

// ------------------------------------------------------------------ compare two evaluations

async function renderCompare(pane, state, token) {
  const path = `/fine_tuning/jobs/${encodeURIComponent(state.id)}/rollouts`;
  let records;
  try {
    records = await listAll(path, { split: "validation", limit: 1000 });
  } catch (e) {
    pane.replaceChildren(errorBox(e));
    return;
  }
  if (token !== renderToken) return;
  const steps = [...new Set(records.map((r) => r.step))].sort((a, b) => a - b);
  if (!steps.length) return pane.replaceChildren(h("p", { class: "muted", id: "compare" }, "No validation rollouts recorded yet."));
  const ckpt = new Map(state.checkpoints.map((c) => [c.step_number, c.fine_tuned_model_checkpoint]));
  const lastStep = Math.max(...state.metrics().map((m) => m.step));
  const named = (s) => (ckpt.has(s) ? ckpt.get(s).split(":").pop() : s === lastStep && state.job.fine_tuned_model ? "final model" : null);
  const opt = (s) => h("option", { value: s }, `step ${s}` + (named(s) ? ` (${named(s)})` : ""));
  const a = h("select", { id: "cmp-a" }, steps.map(opt)), b = h("select", { id: "cmp-b" }, steps.map(opt));
  a.value = steps[0]; b.value = steps[steps.length - 1];
  const grid = h("div", { id: "compare" });
  const draw = async () => {
    const sa = +a.value, sb = +b.value;
    const lines = [...new Set(records.filter((r) => r.step === sa || r.step === sb).map((r) => r.line))].sort((x, y) => x - y);
    const fid = state.job.validation_file;
    let rows = new Map();
    try { rows = await rowsAt(fid, lines); } catch (e) { /* cards without images */ }
    if (token !== renderToken) return;
    const col = (s, line) => h("div", {}, records.filter((r) => r.step === s && r.line === line).map((r) => h("div", { class: "card", "data-rollout-id": r.id },
      h("pre", { class: "completion" }, r.completion),
      h("div", { class: "scores" }, h("span", { class: "score reward" }, `reward ${fmt(r.reward, 3)}`), Object.entries(r.sub_rewards).map(([k, v]) => scoreChip(k, v))),
      rows.get(line) ? boxFigure(rows.get(line), fid, line, r.completion, state.grader, state.boxConvention) : null)));
    const mean = (s) => { const v = records.filter((r) => r.step === s && r.reward !== null).map((r) => r.reward); return v.length ? v.reduce((x, y) => x + y, 0) / v.length : null; };
    grid.replaceChildren(h("div", { class: "compare" },
      h("div", { class: "head" }, "Validation row"), h("div", { class: "head" }, `Step ${sa}: mean reward ${fmt(mean(sa), 3)}`),
      h("div", { class: "head" }, `Step ${sb}: mean reward ${fmt(mean(sb), 3)}`),
      lines.flatMap((line) => [
        h("div", { "data-line": line }, `line ${line}`, rows.get(line) ? boxFigure(rows.get(line), fid, line, null, state.grader, state.boxConvention) : null),
        col(sa, line), col(sb, line)])));
  };
  a.addEventListener("change", draw);
  b.addEventListener("change", draw);
  pane.replaceChildren(h("div", { class: "filters card" }, h("label", {}, "Compare ", a), h("label", {}, "with ", b)), grid);
  await draw();
}

// ------------------------------------------------------------------ grader playground

async function renderPlayground(token) {
  const specBox = h("textarea", { id: "pg-grader", rows: 14, spellcheck: "false" },
    JSON.stringify({ type: "string_check", name: "exact", input: "{{sample.output_text}}", reference: "{{item.solution}}", operation: "eq" }, null, 2));
  const jobSel = h("select", { id: "pg-job" }, h("option", { value: "" }, "— a job's grader —"));
  const fileSel = h("select", { id: "pg-file" });
  const nRows = h("input", { id: "pg-n", type: "number", min: 1, max: 200, value: 5 });
  const source = h("select", { id: "pg-source" }, h("option", { value: "model" }, "a model's samples"),
    h("option", { value: "assistant" }, "the row's assistant message"), h("option", { value: "text" }, "this text for every row"));
  const modelSel = h("select", { id: "pg-model" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: 1, value: 64 });
  const text = h("input", { id: "pg-text", type: "text", size: 40, placeholder: "sample text" });
  const run = h("button", { class: "primary", id: "pg-run", type: "button" }, "Run");
  const validate = h("button", { id: "pg-validate", type: "button" }, "Validate");
  const out = h("div", { id: "pg-out" });
  app().replaceChildren(h("h1", {}, "Grader playground"),
    h("p", { class: "muted" }, "Run a grader on a few rows of a file before paying for training: each sample is graded by " +
      "POST /v1/fine_tuning/alpha/graders/run with its row as the item."),
    h("div", { class: "card" }, h("label", {}, "Start from ", jobSel), specBox),
    h("div", { class: "filters card" }, h("label", {}, "File ", fileSel), h("label", {}, "Rows ", nRows),
      h("label", {}, "Samples from ", source), h("label", {}, "Model ", modelSel), h("label", {}, "Max tokens ", maxTokens), text, validate, run),
    out);
  try {
    const [files, models, jobs] = await Promise.all([api("/files?limit=100"), api("/models"), api("/fine_tuning/jobs?limit=50")]);
    if (token !== renderToken) return;
    fileSel.replaceChildren(...files.data.filter((f) => f.purpose === "fine-tune").map((f) => h("option", { value: f.id }, `${f.filename} (${f.id})`)));
    modelSel.replaceChildren(...models.data.map((m) => h("option", { value: m.id }, m.id)));
    for (const j of jobs.data) if (j.method && j.method.type === "reinforcement") jobSel.append(h("option", { value: j.id }, j.id));
    jobSel.addEventListener("change", () => {
      const j = jobs.data.find((x) => x.id === jobSel.value);
      if (!j) return;
      specBox.value = JSON.stringify(j.method.reinforcement.grader, null, 2);
      if ([...fileSel.options].some((o) => o.value === j.training_file)) fileSel.value = j.training_file;
    });
  } catch (e) {
    out.append(errorBox(e));
  }
  const parsed = () => { try { return JSON.parse(specBox.value); } catch (e) { throw new Error("The grader is not valid JSON: " + e.message); } };
  validate.addEventListener("click", async () => {
    try { await api("/fine_tuning/alpha/graders/validate", { method: "POST", body: { grader: parsed() } }); out.replaceChildren(h("p", { id: "pg-valid" }, "The grader is valid.")); }
    catch (e) { out.replaceChildren(errorBox(e)); }
  });
  run.addEventListener("click", async () => {
    run.disabled = true;
    out.replaceChildren(h("p", { class: "muted" }, "Running…"));
    try {
      const spec = parsed(), fileId = fileSel.value;
      const rows = await firstRows(fileId, Math.max(1, +nRows.value || 1));
      const results = [];
      for (const [line, row] of rows) {
        let sample;
        const msgs = row.messages || [];
        if (source.value === "text") sample = text.value;
        else if (source.value === "assistant") {
          const last = msgs[msgs.length - 1];
          sample = last && last.role === "assistant" ? (typeof last.content === "string" ? last.content : (last.content || []).map((p) => p.text || "").join("")) : "";
        } else {
          const prompt = msgs.length && msgs[msgs.length - 1].role === "assistant" ? msgs.slice(0, -1) : msgs;
          const c = await apiWaiting("/chat/completions", { method: "POST", body: { model: modelSel.value, messages: prompt, max_tokens: +maxTokens.value || 64 } },
            300, (m) => out.replaceChildren(h("p", { class: "muted" }, m)));
          sample = c.choices[0].message.content || "";
        }
        const g = await api("/fine_tuning/alpha/graders/run", { method: "POST", body: { grader: spec, model_sample: sample, item: row } });
        results.push({ line, row, sample, g });
      }
      if (token !== renderToken) return;
      const mean = results.reduce((a, r) => a + (r.g.reward || 0), 0) / results.length;
      out.replaceChildren(h("p", { id: "pg-mean" }, `Mean reward over ${results.length} rows: ${fmt(mean, 4)}`),
        h("div", { class: "rollouts", id: "pg-results" }, results.map((r) => h("div", { class: "rollout", "data-line": r.line, "data-reward": r.g.reward },
          h("div", {}, boxFigure(r.row, fileId, r.line, r.sample, spec)),
          h("div", {}, h("div", { class: "muted" }, `line ${r.line}`), h("pre", { class: "completion" }, r.sample),
            h("div", { class: "scores" }, h("span", { class: "score reward" }, `reward ${fmt(r.g.reward, 3)}`),
              Object.entries(r.g.sub_rewards || {}).map(([k, v]) => scoreChip(k, typeof v === "number" ? v : null))),
            (r.g.metadata && r.g.metadata.errors && Object.entries(r.g.metadata.errors).some(([, v]) => v === true))
              ? h("p", { class: "error" }, Object.entries(r.g.metadata.errors).filter(([, v]) => v === true).map(([k]) => k).join(", ")) : null)))));
    } catch (e) {
      out.replaceChildren(errorBox(e));
    } finally {
      run.disabled = false;
    }
  });
}

// ------------------------------------------------------------------ start

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
