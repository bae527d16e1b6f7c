// app.js: the live dashboard. Reads this server's /metrics every second
// while the tab is visible, turns successive scrapes into what the page
// shows (Prometheus in prometheus.js), keeps five minutes of it, and draws
// the header, the tiles, the servers table and the charts (chart.js).
"use strict";

const POLL_MS = 1000;
// The charts show the last SPAN_SECONDS at most, and at least MIN_SPAN.
const SPAN_SECONDS = 300;
const MIN_SPAN_SECONDS = 60;
// Read-wait quantiles are taken over this much time, as a rate window.
const QUANTILE_WINDOW_SECONDS = 10;

// A read is a statement routed for any reason but these (as in Grafana).
const NOT_READS = new Set(["write", "transaction"]);
const isRead = (labels) => !NOT_READS.has(labels.reason);

// `reason` label values (Reason::as_str in src/router/mod.rs) in words.
const REASONS = {
  fresh: "fresh",
  within_lag: "within lag",
  read_only_transaction: "read-only block",
  optimistic: "optimistic block",
  hint: "hint",
  stale: "no fresh replica",
  no_replica: "no replica up",
  pipelined: "pipelined",
  retry: "retried",
  pinned: "pinned",
  session_state: "session state",
  serializable: "serializable",
  optimistic_overflow: "optimistic overflow",
  learned_write: "learned write",
  causal_unknown: "causal LSN unknown",
};

// A read's reason, with "primary: " before it when it ran there.
const why = (labels) => (labels.route === "primary" ? "primary: " : "") + (REASONS[labels.reason] || labels.reason);

const SQLSTATE_CLASSES = {
  "08": "connection",
  "0A": "not supported",
  22: "data",
  23: "constraint",
  25: "transaction state",
  28: "authorization",
  40: "rollback",
  42: "syntax or access",
  53: "resources",
  54: "limits",
  55: "object state",
  57: "operator intervention",
  58: "system",
  P0: "PL/pgSQL",
  XX: "internal",
};

const PALETTE = ["#2f6fde", "#12a594", "#e5484d", "#f5a524", "#8e4ec6", "#0b8ba6", "#d6409f", "#7c8a1a", "#6e56cf", "#ad5700"];
const PRIMARY_COLOR = "#1d2430";

// ---------------------------------------------------------------------------
// Numbers as text

const format = {
  rate(v) {
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
    return v >= 10 || v === 0 ? String(Math.round(v)) : v.toFixed(1);
  },
  count(v) {
    if (v >= 10000) return (v / 1000).toFixed(0) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  },
  percent(v) {
    return Math.round(v) + "%";
  },
  bytes(v) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i === 0 || v >= 10 ? Math.round(v) : v.toFixed(1)) + " " + units[i];
  },
  seconds(v) {
    if (v === 0) return "0";
    if (v < 1) return Math.round(v * 1000) + " ms";
    return (v >= 10 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)) + " s";
  },
  milliseconds(v) {
    if (v === 0) return "0";
    return (v < 1 ? v.toFixed(2) : v < 10 ? v.toFixed(1) : Math.round(v)) + " ms";
  },
  // An LSN held as a byte position, as Postgres writes it: 0/5949D10.
  lsn(v) {
    const high = Math.floor(v / 4294967296);
    const low = v - high * 4294967296;
    return `${high.toString(16).toUpperCase()}/${low.toString(16).toUpperCase()}`;
  },
};

// ---------------------------------------------------------------------------
// What one scrape (and the ones before it) says

// The servers, primary first, as the monitor knows them.
function servers(scrape) {
  return Prometheus.select(scrape, "causeway_server_up")
    .map((s) => ({ name: s.labels.server, role: s.labels.role, up: s.value === 1 }))
    .sort((a, b) => (a.role === b.role ? a.name.localeCompare(b.name) : a.role === "primary" ? -1 : 1));
}

function gauge(scrape, name, keep) {
  const samples = Prometheus.select(scrape, name, keep);
  return samples.length ? Prometheus.total(Prometheus.sumBy(scrape, name, keep)) : null;
}

// Per-server gauges: server name -> value.
function perServer(scrape, name) {
  return Prometheus.sumBy(scrape, name, null, (l) => l.server);
}

// Everything the page shows at one moment. `previous` is the scrape before
// (rates), `windowStart` one about QUANTILE_WINDOW_SECONDS older (read-wait
// quantiles); both null on the first scrape, which has only gauges.
function measure(now, previous, windowStart) {
  const P = Prometheus;
  const rate = (name, keep, by) => (previous ? P.rateBy(now, previous, name, keep, by) : null);
  const statements = "causeway_statements_total";
  const m = { at: now.at, servers: servers(now) };

  m.readsByServer = rate(statements, isRead, (l) => l.server);
  if (m.readsByServer) for (const s of m.servers) if (!m.readsByServer.has(s.name)) m.readsByServer.set(s.name, 0);
  m.readsByReason = rate(statements, isRead, why);
  m.statements = rate(statements, null, (l) =>
    l.reason === "write" ? "writes" : l.reason === "transaction" ? "in transaction blocks" : `reads on ${l.route === "replica" ? "replicas" : "the primary"}`,
  );
  m.reads = m.readsByServer && P.total(m.readsByServer);
  const onReplicas = rate(statements, (l) => isRead(l) && l.route === "replica");
  m.share = m.reads > 0 ? (100 * P.total(onReplicas)) / m.reads : null;

  const outcomes = { caught_up: "waited, then fresh", gave_up: "gave up waiting" };
  m.waits = rate("causeway_read_waits_total", null, (l) => outcomes[l.outcome] || l.outcome);
  if (m.waits) {
    for (const label of Object.values(outcomes)) if (!m.waits.has(label)) m.waits.set(label, 0);
    m.waits.set("refused (on_stale = error)", P.total(rate("causeway_stale_reads_refused_total")));
  }
  const quantile = (q) => {
    const seconds = windowStart && P.quantile(q, now, windowStart, "causeway_read_wait_seconds");
    return seconds === null || seconds === undefined ? null : seconds * 1000;
  };
  m.waitP50 = quantile(0.5);
  m.waitP99 = quantile(0.99);
  m.readWait = new Map([
    ["p50", m.waitP50],
    ["p99", m.waitP99],
  ]);

  m.lagBytes = perServer(now, "causeway_replica_lag_bytes");
  m.lagSeconds = perServer(now, "causeway_replica_lag_seconds");
  m.replicaHealthy = perServer(now, "causeway_replica_healthy");
  m.replayed = perServer(now, "causeway_replica_replayed_lsn_bytes");
  m.timelines = perServer(now, "causeway_replica_timeline");
  m.connections = P.sumBy(now, "causeway_server_connections", null, (l) => `${l.server} · ${l.state.replace("_", " ")}`);
  m.clients = gauge(now, "causeway_client_connections") ?? 0;
  m.newClients = rate("causeway_client_connections_total");
  m.errors = rate("causeway_errors_total", null, (l) => `${l.class} ${SQLSTATE_CLASSES[l.class] || ""}`.trim());
  m.causalMap = gauge(now, "causeway_causal_map_entries");

  m.primaryUp = gauge(now, "causeway_primary_up");
  m.splitBrain = gauge(now, "causeway_split_brain");
  m.primaryLsn = gauge(now, "causeway_primary_lsn_bytes");
  m.timeline = gauge(now, "causeway_timeline");
  const build = P.select(now, "causeway_build_info")[0];
  m.version = build ? build.labels.version : null;
  // Since start: counters as they stand.
  m.gaveUpTotal = gauge(now, "causeway_read_waits_total", (l) => l.outcome === "gave_up") ?? 0;
  m.gaveUpRate = m.waits ? m.waits.get("gave up waiting") : null;
  m.refusedTotal = (gauge(now, "causeway_stale_reads_refused_total") ?? 0) + (gauge(now, "causeway_no_primary_errors_total") ?? 0);
  const readsTotal = gauge(now, statements, isRead) ?? 0;
  m.shareTotal = readsTotal > 0 ? (100 * (gauge(now, statements, (l) => isRead(l) && l.route === "replica") ?? 0)) / readsTotal : null;
  return m;
}

// ---------------------------------------------------------------------------
// Colours: servers keep theirs everywhere; other series get the next free
// colour of their chart, kept while the page lives.

function serverColor(name, all) {
  if (name === "primary" || all.find((s) => s.name === name && s.role === "primary")) return PRIMARY_COLOR;
  const replicas = all.filter((s) => s.role !== "primary").map((s) => s.name);
  const i = replicas.indexOf(name);
  return PALETTE[(i < 0 ? replicas.length : i) % PALETTE.length];
}

function paletteFor() {
  const assigned = new Map();
  return (label) => {
    if (!assigned.has(label)) assigned.set(label, PALETTE[assigned.size % PALETTE.length]);
    return assigned.get(label);
  };
}

// The server (or route) a series is of: "replica0 · idle", "primary: hint".
const serverOf = (label) => label.split(/ · |: /)[0];
const byServer = (all) => (label) => serverColor(serverOf(label), all);
const fixed = (colors) => {
  const next = paletteFor();
  return () => (label) => colors[label] || next(label);
};

// ---------------------------------------------------------------------------
// The charts, in the order they are laid out (four to a row)

const CHARTS = [
  { id: "reads-by-server", title: "Reads / s", unit: "by server", format: format.rate, missing: 0, color: byServer, pick: (m) => m.readsByServer },
  {
    id: "reads-by-reason",
    title: "Reads / s",
    unit: "by why (dashed: on the primary)",
    format: format.rate,
    missing: 0,
    hideZero: true,
    pick: (m) => m.readsByReason,
    dashed: (label) => label.startsWith("primary"),
  },
  {
    id: "replica-share",
    title: "Reads on replicas",
    unit: "share of reads",
    format: format.percent,
    maximum: 100,
    missing: null,
    color: () => () => PALETTE[1],
    pick: (m) => m.reads === null ? null : new Map([["on replicas", m.share]]),
  },
  {
    id: "read-wait",
    title: "Read wait",
    unit: `for a fresh replica, last ${QUANTILE_WINDOW_SECONDS} s`,
    format: format.milliseconds,
    minimum: 1,
    missing: null,
    color: fixed({ p50: PALETTE[0], p99: PALETTE[2] }),
    pick: (m) => m.readWait,
  },
  {
    id: "waits",
    title: "Read-your-writes waits / s",
    unit: "by outcome",
    format: format.rate,
    missing: 0,
    color: fixed({ "waited, then fresh": PALETTE[1], "gave up waiting": PALETTE[3], "refused (on_stale = error)": PALETTE[2] }),
    pick: (m) => m.waits,
  },
  { id: "lag-bytes", title: "Replica lag", unit: "WAL bytes not replayed", format: format.bytes, missing: null, color: byServer, pick: (m) => m.lagBytes },
  { id: "lag-seconds", title: "Replica lag", unit: "seconds", format: format.seconds, missing: null, color: byServer, pick: (m) => m.lagSeconds },
  {
    id: "server-connections",
    title: "Server connections",
    unit: "per pool (dashed: idle)",
    format: format.count,
    minimum: 1,
    missing: null,
    color: byServer,
    dashed: (label) => label.endsWith("idle"),
    pick: (m) => m.connections,
  },
  {
    id: "statements",
    title: "Statements / s",
    unit: "by kind",
    format: format.rate,
    missing: 0,
    color: fixed({ "reads on replicas": PALETTE[1], "reads on the primary": PRIMARY_COLOR, writes: PALETTE[2], "in transaction blocks": PALETTE[4] }),
    pick: (m) => m.statements,
  },
  { id: "clients", title: "Clients", unit: "connected", format: format.count, minimum: 1, missing: null, pick: (m) => new Map([["connected", m.clients]]) },
  { id: "errors", title: "Errors / s", unit: "sent to clients, by SQLSTATE class", format: format.rate, missing: 0, hideZero: true, pick: (m) => m.errors },
  {
    id: "causal-map",
    title: "Causal map",
    unit: "clients' causal LSNs held",
    format: format.count,
    minimum: 1,
    missing: null,
    color: () => () => PALETTE[4],
    pick: (m) => (m.causalMap === null ? null : new Map([["entries", m.causalMap]])),
  },
];

// ---------------------------------------------------------------------------
// Drawing

function element(tag, attributes = {}, ...children) {
  const e = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "dataset") Object.assign(e.dataset, value);
    else e.setAttribute(key, value);
  }
  e.append(...children);
  return e;
}

const TILES = [
  { id: "reads", label: "Reads / s", value: (m) => m.reads, text: format.rate, sub: (m) => (m.statements ? `${format.rate(Prometheus.total(m.statements))} statements / s` : "") },
  {
    id: "replica-share",
    label: "Reads on replicas",
    value: (m) => m.share,
    text: format.percent,
    sub: (m) => (m.shareTotal === null ? "" : `${format.percent(m.shareTotal)} since start`),
  },
  { id: "read-wait-p50", label: "Read wait p50", value: (m) => m.waitP50, text: format.milliseconds, sub: () => `last ${QUANTILE_WINDOW_SECONDS} s` },
  { id: "read-wait-p99", label: "Read wait p99", value: (m) => m.waitP99, text: format.milliseconds, sub: () => `last ${QUANTILE_WINDOW_SECONDS} s` },
  {
    id: "gave-up",
    label: "Gave up waiting",
    value: (m) => m.gaveUpTotal,
    text: format.count,
    sub: (m) => `since start · ${m.gaveUpRate === null ? "–" : format.rate(m.gaveUpRate)} / s now`,
  },
  { id: "refused", label: "Refused", value: (m) => m.refusedTotal, text: format.count, sub: () => "since start: no fresh replica or no primary" },
  { id: "clients", label: "Clients", value: (m) => m.clients, text: format.count, sub: (m) => (m.newClients ? `${format.rate(Prometheus.total(m.newClients))} new / s` : "") },
  { id: "causal-map", label: "Causal map", value: (m) => m.causalMap, text: format.count, sub: () => "clients' LSNs held" },
];

function drawHeader(m) {
  const primary = document.getElementById("primary");
  primary.dataset.up = String(m.primaryUp);
  primary.textContent = m.primaryUp === 1 ? "primary up" : "no primary: writes fail";
  primary.className = "pill " + (m.primaryUp === 1 ? "up" : "down");
  const replicas = m.servers.filter((s) => s.role !== "primary");
  const healthy = replicas.filter((s) => m.replicaHealthy.get(s.name) === 1).length;
  const pill = document.getElementById("replicas");
  pill.dataset.healthy = String(healthy);
  pill.dataset.total = String(replicas.length);
  pill.textContent = `replicas ${healthy}/${replicas.length} serving reads`;
  pill.className = "pill " + (healthy === replicas.length ? "up" : "down");
  document.getElementById("split-brain").hidden = m.splitBrain !== 1;
  document.getElementById("version").textContent = m.version ? `v${m.version}` : "";
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()} · every ${POLL_MS / 1000} s`;
}

function drawTiles(m) {
  const box = document.getElementById("tiles");
  box.replaceChildren(
    ...TILES.map((tile) => {
      const value = tile.value(m);
      return element(
        "div",
        { class: "tile", dataset: { stat: tile.id, value: value === null || value === undefined ? "" : String(value) } },
        element("div", { class: "label" }, tile.label),
        element("div", { class: "value" }, value === null || value === undefined ? "–" : tile.text(value)),
        element("div", { class: "sub" }, tile.sub(m)),
      );
    }),
  );
}

function drawServers(m) {
  const cell = (content, attributes = {}) => element("td", attributes, ...[].concat(content));
  const connections = (server, state) => m.connections.get(`${server} · ${state}`) ?? 0;
  const rows = m.servers.map((s) => {
    const replica = s.role !== "primary";
    const healthy = replica ? m.replicaHealthy.get(s.name) === 1 : s.up;
    const health = !s.up ? "down" : healthy ? "up" : "up, no reads (off timeline)";
    const lagBytes = replica ? m.lagBytes.get(s.name) : null;
    const lagSeconds = replica ? m.lagSeconds.get(s.name) : null;
    const reads = m.readsByServer ? m.readsByServer.get(s.name) ?? 0 : null;
    const position = replica ? m.replayed.get(s.name) : m.primaryLsn;
    const timeline = replica ? m.timelines.get(s.name) : m.timeline;
    const swatch = element("span", { class: "swatch" });
    swatch.style.background = serverColor(s.name, m.servers);
    return element(
      "tr",
      {
        dataset: {
          server: s.name,
          role: s.role,
          healthy: healthy ? "1" : "0",
          reads: reads === null ? "" : String(reads),
          lagBytes: lagBytes === null || lagBytes === undefined ? "" : String(lagBytes),
          lagSeconds: lagSeconds === null || lagSeconds === undefined ? "" : String(lagSeconds),
        },
      },
      cell([swatch, s.name]),
      cell(s.role),
      cell(health, { class: "health", "data-healthy": healthy ? "1" : "0" }),
      cell(reads === null ? "–" : format.rate(reads), { class: "number" }),
      cell(lagBytes === null || lagBytes === undefined ? "" : format.bytes(lagBytes), { class: "number" }),
      cell(lagSeconds === null || lagSeconds === undefined ? "" : format.seconds(lagSeconds), { class: "number" }),
      cell(position === null || position === undefined ? "" : (replica ? "" : "written ") + format.lsn(position)),
      cell(timeline ? String(timeline) : "", { class: "number" }),
      cell(`${connections(s.name, "in use")} / ${connections(s.name, "idle")}`, { class: "number" }),
    );
  });
  document.querySelector("#servers tbody").replaceChildren(...rows);
}

// ---------------------------------------------------------------------------
// The loop

const history = { scrapes: [], points: [] };
const charts = [];

function ingest(scrape) {
  const { scrapes, points } = history;
  const previous = scrapes.length ? scrapes[scrapes.length - 1] : null;
  scrapes.push(scrape);
  // Keep the newest scrape at least QUANTILE_WINDOW_SECONDS old, and all after it.
  while (scrapes.length > 2 && scrape.at - scrapes[1].at >= QUANTILE_WINDOW_SECONDS) scrapes.shift();
  const windowStart = scrapes.length > 1 ? scrapes[0] : null;
  const m = measure(scrape, previous, windowStart);
  points.push(m);
  while (points.length && scrape.at - points[0].at > SPAN_SECONDS + 5) points.shift();
  return m;
}

function drawCharts() {
  const { points } = history;
  if (!points.length) return;
  const times = points.map((p) => p.at);
  const newest = times[times.length - 1];
  const span = Math.min(SPAN_SECONDS, Math.max(MIN_SPAN_SECONDS, newest - times[0]));
  const all = points[points.length - 1].servers;
  charts.forEach(({ chart, spec, colorOf }) => {
    const picked = points.map((p) => spec.pick(p));
    const labels = [];
    for (const groups of picked) if (groups) for (const label of groups.keys()) if (!labels.includes(label)) labels.push(label);
    // Replicas first, then the primary's series.
    const onPrimary = (label) => serverOf(label) === "primary" || all.some((s) => s.role === "primary" && s.name === serverOf(label));
    labels.sort((a, b) => (onPrimary(a) === onPrimary(b) ? a.localeCompare(b) : onPrimary(a) ? 1 : -1));
    const color = spec.color ? spec.color(all) : colorOf;
    const series = labels
      .map((label) => ({
        label,
        values: picked.map((groups) => {
          if (!groups) return null;
          const value = groups.get(label);
          return value === undefined ? spec.missing : value;
        }),
      }))
      // Series at zero all along say nothing there (every reason and error
      // class exists from the start, at zero).
      .filter((s) => !spec.hideZero || s.values.some((v, i) => v > 0 && newest - times[i] <= span))
      .map((s) => ({ ...s, color: color(s.label), dashed: spec.dashed ? spec.dashed(s.label) : false }));
    chart.render(times, series, span);
  });
}

function showProblem(text) {
  const problem = document.getElementById("problem");
  problem.hidden = !text;
  problem.textContent = text || "";
  document.body.dataset.state = text ? "error" : "live";
  if (text) document.body.dataset.error = text;
  else delete document.body.dataset.error;
}

let timer = null;
let polling = false;

async function poll() {
  timer = null;
  polling = true;
  const controller = new AbortController();
  const abandon = setTimeout(() => controller.abort(), 5000);
  try {
    const response = await fetch("/metrics", { cache: "no-store", signal: controller.signal });
    if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
    const m = ingest(Prometheus.parse(await response.text(), performance.now() / 1000));
    drawHeader(m);
    drawTiles(m);
    drawServers(m);
    drawCharts();
    document.body.dataset.polls = String(Number(document.body.dataset.polls) + 1);
    showProblem(null);
  } catch (error) {
    showProblem(`cannot read /metrics: ${error.message}`);
  } finally {
    clearTimeout(abandon);
    polling = false;
    schedule();
  }
}

// Polls only while someone can see the page: a hidden tab costs nothing.
function schedule() {
  if (document.visibilityState === "visible" && timer === null && !polling) timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState !== "visible" && timer !== null) {
    clearTimeout(timer);
    timer = null;
  }
  schedule();
});

const grid = document.getElementById("charts");
for (const spec of CHARTS) {
  charts.push({ spec, colorOf: paletteFor(), chart: new LineChart(grid, spec) });
}
window.addEventListener("resize", drawCharts);
poll();
