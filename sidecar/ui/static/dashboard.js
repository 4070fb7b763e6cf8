// The dashboard page: reads /ui/api/summary every few seconds and draws it with plotly.js
// (served by the sidecar from the installed plotly package). Text goes into the page through
// textContent only, never as HTML.
"use strict";

// when the scripts (plotly.js first) are loaded and run, in ms since the navigation started
document.body.dataset.scriptsReadyMs = performance.now().toFixed(1);

const REFRESH_MS = 5000;
const DECISIONS_SHOWN = 100;
const PATHS = [["hit-exact", "exact hit"], ["hit-semantic", "semantic hit"], ["miss", "miss"]];
const PLOT_CONFIG = { displayModeBar: false, responsive: true };
const BASE_LAYOUT = {
  margin: { l: 50, r: 50, t: 36, b: 40 },
  font: { size: 11 },
  legend: { orientation: "h", y: -0.2 },
  paper_bgcolor: "#fff",
  plot_bgcolor: "#fff",
};

function layout(title, extra) {
  return Object.assign({}, BASE_LAYOUT, { title: { text: title, font: { size: 13 } } }, extra);
}

function pick(data, path) {
  return path.split(".").reduce((v, k) => (v == null ? v : v[k]), data);
}

function formatValue(value, format) {
  if (value == null) return "–";
  if (format === "percent") return (value * 100).toFixed(1) + "%";
  if (format === "usd") return "$" + (value >= 1 ? value.toFixed(2) : value.toPrecision(3));
  return String(value);
}

function fillTable(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const cell of row) {
      const td = document.createElement("td");
      const value = typeof cell === "object" && cell !== null ? cell.value : cell;
      td.textContent = value == null ? "–" : String(value);
      if (typeof value === "number") td.className = "num";
      if (cell && cell.cls) td.className = cell.cls;
      if (cell && cell.key) td.dataset.key = cell.key;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function percent(v) {
  return v == null ? null : v * 100;  // null: no request in that interval (a gap)
}

function times(series) {
  return series.t.map((t) => new Date(t * 1000));
}

function drawCharts(data) {
  const s = data.series;
  const x = times(s);
  const hitRate = Plotly.react("chart-hit-rate", [
    { x, y: s.hit_rate_exact.map(percent), name: "exact", mode: "lines+markers" },
    { x, y: s.hit_rate_semantic.map(percent), name: "semantic", mode: "lines+markers" },
  ], layout("Hit rate over time (%)", { yaxis: { rangemode: "tozero" } }), PLOT_CONFIG);
  const rps = Plotly.react("chart-rps", [
    { x, y: s.rps, name: "requests/s", mode: "lines+markers" },
  ], layout("Requests per second", { yaxis: { rangemode: "tozero" } }), PLOT_CONFIG);
  const savings = Plotly.react("chart-savings", [
    { x, y: s.tokens_saved, name: "tokens saved", mode: "lines+markers" },
    { x, y: s.cost_saved_usd, name: "USD saved", mode: "lines+markers", yaxis: "y2" },
  ], layout("Tokens and money saved (cumulative)", {
    yaxis: { title: { text: "tokens" }, rangemode: "tozero" },
    yaxis2: { title: { text: "USD" }, overlaying: "y", side: "right", rangemode: "tozero" },
  }), PLOT_CONFIG);
  const labels = PATHS.map((p) => p[1]);
  const latency = Plotly.react("chart-latency", ["p50_ms", "p90_ms", "p99_ms"].map((q) => ({
    type: "bar", name: q.replace("_ms", ""), x: labels,
    y: PATHS.map((p) => data.latency[p[0]][q]),
  })), layout("Added latency per path (ms)", { barmode: "group" }), PLOT_CONFIG);
  const rules = data.guardrails.map((g) => g.rule);
  const groups = [["blocked", "blocked"], ["redacted", "redacted"], ["detected", "detect-only"],
    ["errors", "errors"]];
  const guard = Plotly.react("chart-guardrails", groups.map(([key, name]) => ({
    type: "bar", name, x: rules, y: data.guardrails.map((g) => g[key]),
  })), layout("Guardrail outcomes per rule", { barmode: "stack" }), PLOT_CONFIG);
  return Promise.all([hitRate, rps, savings, latency, guard]);
}

function drawFigures(data) {
  for (const el of document.querySelectorAll("[data-figure]")) {
    el.textContent = formatValue(pick(data, el.dataset.figure), el.dataset.format);
    el.dataset.raw = String(pick(data, el.dataset.figure));
  }
  fillTable("table-latency", PATHS.map(([key, name]) => {
    const l = data.latency[key];
    return [name, { value: l.count, key: key + ".count" }, l.p50_ms, l.p90_ms, l.p99_ms];
  }));
  fillTable("table-guardrails", data.guardrails.map((g) => [
    g.rule,
    { value: g.blocked, key: g.rule + ".blocked" },
    { value: g.redacted, key: g.rule + ".redacted" },
    { value: g.detected, key: g.rule + ".detected" },
    { value: g.errors, key: g.rule + ".errors" },
  ]));
  fillTable("table-savings", data.savings.map((r) => [
    r.model, r.layer, r.tokens, formatValue(r.cost_usd, "usd"),
  ]));
  fillTable("table-partitions", data.partitions.map((p) => [
    p.partition, { value: p.requests, key: p.partition + ".requests" },
    p["hit-exact"], p["hit-semantic"], p.miss, p.bypass,
  ]));
  document.getElementById("partitions-note").textContent =
    `(${data.partitions_shown} of ${data.partitions_total}, most requests first)`;
  fillTable("table-decisions", data.decisions.map((d) => [
    new Date(d.time * 1000).toISOString().replace("T", " ").slice(0, 23),
    d.partition || "–",
    { value: d.blocked ? "blocked" : d.status, cls: d.blocked ? "status-blocked" : "" },
    d.reason,
    d.latency_ms,
    d.rules.map((r) => `${r.rule} (${r.outcome})`).join(", "),
  ]));
  document.getElementById("decisions-note").textContent =
    `(newest ${data.decisions.length} of ${data.decisions_held} held)`;
  document.getElementById("updated").textContent =
    "updated " + new Date(data.time * 1000).toLocaleTimeString();
}

async function refresh() {
  const reply = await fetch(`/ui/api/summary?decisions=${DECISIONS_SHOWN}`, {
    credentials: "same-origin",
    headers: { accept: "application/json" },
  });
  if (reply.status === 401) {
    window.location.assign("/ui/login");
    return;
  }
  if (!reply.ok) throw new Error(`summary: HTTP ${reply.status}`);
  const data = await reply.json();
  drawFigures(data);
  await drawCharts(data);
  // tests and the benchmark wait for this: figures, tables and charts are all drawn
  if (!document.body.dataset.rendered) {
    document.body.dataset.firstRenderMs = performance.now().toFixed(1);  // since navigation
  }
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}

async function loop() {
  try {
    await refresh();
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
  setTimeout(loop, REFRESH_MS);
}

loop();
