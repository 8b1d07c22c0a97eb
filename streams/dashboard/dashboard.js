// trovemeter dashboard: polls /dashboard/summary/ (and the agents' /operations/open/ when the
// worker serves it) and renders the panels. No libraries: DOM + inline SVG.
"use strict";

const POLL_MS = 1500;
const SVG_NS = "http://www.w3.org/2000/svg";
const STATE_COLORS = {
  active: "#2e9d5b", building: "#3b6fd4", resizing: "#8a63d2", rebooting: "#5aa9c9",
  deleting: "#d99a1e", deleted: "#aab1bb", error: "#d64545", unknown: "#cfd4db",
};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
  return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
}

function fmtNumber(value, digits) {
  return Number(value || 0).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function fmtTime(iso) {
  if (!iso) return "";
  return iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z");
}

function fillRows(tableId, emptyId, rows, makeCells) {
  const body = $(tableId).querySelector("tbody");
  const fresh = document.createDocumentFragment();
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of makeCells(row)) tr.appendChild(cell);
    fresh.appendChild(tr);
  }
  body.replaceChildren(fresh);
  $(emptyId).hidden = rows.length > 0;
  $(tableId).hidden = rows.length === 0;
}

function td(text, cls) { return el("td", cls ? { class: cls } : {}, text); }

function renderTiles(data) {
  const ops = data.operations;
  $("kpi-operations").textContent = fmtNumber(ops.total, 0);
  $("kpi-succeeded").textContent = fmtNumber(ops.by_outcome.succeeded, 0);
  $("kpi-failed").textContent = fmtNumber(ops.by_outcome.failed, 0);
  $("kpi-abandoned").textContent = fmtNumber(ops.by_outcome.abandoned, 0);
  $("kpi-resources").textContent = fmtNumber(data.resources.total, 0);
  $("kpi-dead-letters").textContent = fmtNumber(data.dead_letters.total, 0);
}

function renderOperations(ops) {
  fillRows("operations", "operations-empty", ops.by_operation, (row) => [
    td(row.name, "mono"), td(row.count, "n"), td(row.succeeded, "n"),
    td(row.failed, row.failed ? "n bad" : "n"), td(row.abandoned, row.abandoned ? "n warn" : "n"),
    td(fmtDuration(row.p50_s), "n"), td(fmtDuration(row.p95_s), "n"),
  ]);
}

function renderChart(recent) {
  const box = $("chart");
  const width = Math.max(320, box.clientWidth || 800);
  const height = Math.max(160, box.clientHeight || 220);
  const pad = { left: 44, right: 8, top: 8, bottom: 22 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none" });
  const durations = recent.map((r) => r.duration_s).filter((d) => d !== null && d > 0);
  const maxLog = Math.max(2, Math.ceil(Math.log10(Math.max(10, ...durations))));
  const minLog = 0; // 1 second
  const y = (seconds) => {
    const v = Math.log10(Math.max(1, seconds));
    return pad.top + plotH - ((v - minLog) / (maxLog - minLog)) * plotH;
  };
  const ticks = [[1, "1s"], [10, "10s"], [60, "1m"], [600, "10m"], [3600, "1h"], [36000, "10h"], [360000, "100h"]];
  for (const [seconds, label] of ticks) {
    if (Math.log10(seconds) > maxLog) continue;
    const ty = y(seconds);
    chart.appendChild(svg("line", { x1: pad.left, x2: width - pad.right, y1: ty, y2: ty, class: "grid" }));
    chart.appendChild(svg("text", { x: pad.left - 6, y: ty + 4, "text-anchor": "end" }, label));
  }
  chart.appendChild(svg("line", { x1: pad.left, x2: pad.left, y1: pad.top, y2: pad.top + plotH, class: "axis" }));
  chart.appendChild(svg("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH, y2: pad.top + plotH, class: "axis" }));
  const slots = Math.max(recent.length, 40);
  const slot = plotW / slots;
  const barW = Math.max(2, slot * 0.72);
  recent.forEach((row, i) => {
    const x = pad.left + (slots - recent.length + i) * slot + (slot - barW) / 2;
    const hasDuration = row.duration_s !== null && row.duration_s !== undefined;
    const top = hasDuration ? y(row.duration_s) : pad.top + plotH - 4;
    const bar = svg("rect", {
      x: x.toFixed(1), y: top.toFixed(1), width: barW.toFixed(1),
      height: Math.max(2, pad.top + plotH - top).toFixed(1), rx: 1.5, class: row.outcome,
    });
    bar.appendChild(svg("title", {}, `${row.name} ${row.outcome} ${hasDuration ? fmtDuration(row.duration_s) : "(no end)"}\n${fmtTime(row.ended_at)}`));
    chart.appendChild(bar);
  });
  chart.appendChild(svg("text", { x: pad.left, y: height - 6 }, recent.length ? `last ${recent.length} operations` : "no operation yet"));
  box.replaceChildren(chart);
}

function renderErrors(errors) {
  fillRows("errors", "errors-empty", errors.top, (row) => [
    td(row.count, "n"), td(row.operation, "mono"), td(row.exception_class, "mono"),
    td(row.last_message, "msg"), td(fmtTime(row.last_at), "mono"),
  ]);
}

function renderResources(resources) {
  const box = $("resources");
  const fresh = document.createDocumentFragment();
  const types = Object.entries(resources.by_type || {});
  for (const [type, states] of types) {
    const total = Object.values(states).reduce((a, b) => a + b, 0);
    const block = el("div", { class: "rtype" });
    const name = el("div", { class: "name" }, type + " ");
    name.appendChild(el("span", { class: "count" }, `(${total})`));
    block.appendChild(name);
    const stack = el("div", { class: "stack" });
    const legend = el("div", { class: "states" });
    for (const [state, count] of Object.entries(states)) {
      const color = STATE_COLORS[state] || STATE_COLORS.unknown;
      const part = el("span", { title: `${state}: ${count}` });
      part.style.width = (100 * count / total).toFixed(2) + "%";
      part.style.background = color;
      stack.appendChild(part);
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(`${state} ${count}`));
      legend.appendChild(item);
    }
    block.appendChild(stack);
    block.appendChild(legend);
    fresh.appendChild(block);
  }
  box.replaceChildren(fresh);
  $("resources-empty").hidden = types.length > 0;
}

const USAGE_ROWS = 12;

function renderUsage(usage) {
  const all = usage ? [...usage.tenants] : [];
  all.sort((a, b) => (b.instance_hours - a.instance_hours) || (b.exists_hours - a.exists_hours)
    || a.tenant_id.localeCompare(b.tenant_id));
  const rows = all.slice(0, USAGE_ROWS);
  if (all.length > USAGE_ROWS) {
    const rest = all.slice(USAGE_ROWS);
    const sum = (key) => rest.reduce((total, row) => total + row[key], 0);
    rows.push({ tenant_id: `+ ${rest.length} more tenants`, instance_hours: sum("instance_hours"),
      volume_gb_hours: sum("volume_gb_hours"), backup_gb_hours: sum("backup_gb_hours"),
      exists_hours: sum("exists_hours") });
  }
  fillRows("usage", "usage-empty", rows, (row) => [
    td(row.tenant_id, "mono"), td(fmtNumber(row.instance_hours, 2), "n"),
    td(fmtNumber(row.volume_gb_hours, 1), "n"), td(fmtNumber(row.backup_gb_hours, 2), "n"),
    td(fmtNumber(row.exists_hours, 0), "n"),
  ]);
  if (!usage) $("usage-empty").textContent = "No usage yet.";
}

function rowsOf(document) {
  if (Array.isArray(document)) return document;
  if (document && typeof document === "object") {
    for (const key of ["operations", "open", "items", "results", "records"]) {
      if (Array.isArray(document[key])) return document[key];
    }
  }
  return null;
}

async function renderOpen(views) {
  const box = $("open");
  if (!views.includes("/operations/open/")) return;
  const response = await fetch("/operations/open/", { cache: "no-store" });
  if (!response.ok) return;
  const rows = rowsOf(await response.json());
  if (rows === null) return;
  const fresh = document.createDocumentFragment();
  fresh.appendChild(el("p", { class: "empty" }, `${rows.length} open`));
  if (rows.length) {
    const table = el("table");
    const head = el("tr");
    for (const title of ["operation", "resource", "started"]) head.appendChild(el("th", {}, title));
    table.appendChild(head);
    for (const row of rows.slice(0, 8)) {
      const tr = el("tr");
      const name = [row.resource_type, row.operation].filter(Boolean).join(".") || "?";
      tr.appendChild(td(name, "mono"));
      tr.appendChild(td(row.resource_id || row.request_id || "", "mono"));
      tr.appendChild(td(fmtTime(row.started_at || row.occurred_at || ""), "mono"));
      table.appendChild(tr);
    }
    fresh.appendChild(table);
  }
  box.replaceChildren(fresh);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
}

let lastOk = 0;

async function poll() {
  try {
    const response = await fetch("/dashboard/summary/", { cache: "no-store" });
    if (!response.ok) throw new Error(`summary: HTTP ${response.status}`);
    const data = await response.json();
    renderTiles(data);
    renderOperations(data.operations);
    renderChart(data.operations.recent);
    renderErrors(data.errors);
    renderResources(data.resources);
    renderUsage(data.usage);
    await renderOpen(data.worker.views || []);
    lastOk = Date.now();
    const feed = data.feed || {};
    const note = feed.error ? ` · feed: ${feed.error}` : (feed.caught_up ? "" : " · catching up");
    setStatus("live", `live · ${data.worker.app_id} · since ${fmtTime(feed.since)}${note}`);
    document.body.dataset.operations = String(data.operations.total);
  } catch (error) {
    const age = lastOk ? Math.round((Date.now() - lastOk) / 1000) + "s ago" : "never";
    setStatus("stale", `worker unreachable (last update ${age})`);
  } finally {
    window.setTimeout(poll, POLL_MS);
  }
}

poll();
