// prometheus.js: the Prometheus text format read in the browser, and the
// little of PromQL the dashboard needs: sums by label, per-second rates of
// counters between two scrapes, and quantiles of histograms. Plain
// functions over data, no DOM: app.js decides what to draw.
"use strict";

const Prometheus = (() => {
  function parseValue(text) {
    switch (text) {
      case "+Inf":
        return Infinity;
      case "-Inf":
        return -Infinity;
      default:
        return Number(text);
    }
  }

  // One sample line, `name{a="x",b="y"} value`, or null when malformed.
  // `key` (the line up to its value) names the series across scrapes.
  function parseLine(line) {
    let i = 0;
    while (i < line.length && line[i] !== "{" && line[i] !== " ") i++;
    const name = line.slice(0, i);
    const labels = {};
    if (line[i] === "{") {
      i++;
      while (i < line.length && line[i] !== "}") {
        if (line[i] === "," || line[i] === " ") {
          i++;
          continue;
        }
        const equals = line.indexOf("=", i);
        if (equals < 0 || line[equals + 1] !== '"') return null;
        const label = line.slice(i, equals).trim();
        let value = "";
        i = equals + 2;
        while (i < line.length && line[i] !== '"') {
          if (line[i] === "\\" && i + 1 < line.length) {
            value += line[i + 1] === "n" ? "\n" : line[i + 1];
            i += 2;
          } else {
            value += line[i];
            i += 1;
          }
        }
        labels[label] = value;
        i++; // the closing quote
      }
      i++; // the closing brace
    }
    const key = line.slice(0, i);
    const text = line.slice(i).trim().split(/\s+/)[0];
    const value = parseValue(text);
    if (name === "" || (Number.isNaN(value) && text !== "NaN")) return null;
    return { name, labels, value, key };
  }

  // A scrape: its samples, indexed by series, and when it was taken
  // (seconds on the page's clock).
  function parse(text, at) {
    const samples = [];
    for (const raw of text.split("\n")) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) continue;
      const sample = parseLine(line);
      if (sample) samples.push(sample);
    }
    return { at, samples, byKey: new Map(samples.map((s) => [s.key, s])) };
  }

  function select(scrape, name, keep) {
    return scrape.samples.filter((s) => s.name === name && (!keep || keep(s.labels)));
  }

  // How much a counter grew since `older`. A series the older scrape lacks
  // was created since, from zero; one that went down was reset.
  function increase(sample, older) {
    const before = older.byKey.get(sample.key);
    return before && before.value <= sample.value ? sample.value - before.value : sample.value;
  }

  function addTo(groups, group, value) {
    groups.set(group, (groups.get(group) || 0) + value);
  }

  // Gauges summed by group: sum by (...) (name{keep}).
  function sumBy(scrape, name, keep, by) {
    const groups = new Map();
    for (const s of select(scrape, name, keep)) addTo(groups, by ? by(s.labels) : "", s.value);
    return groups;
  }

  // Per-second increase of counters between two scrapes, summed by group:
  // sum by (...) (rate(name{keep}[window])).
  function rateBy(newer, older, name, keep, by) {
    const groups = new Map();
    const seconds = newer.at - older.at;
    if (!(seconds > 0)) return groups;
    for (const s of select(newer, name, keep)) {
      addTo(groups, by ? by(s.labels) : "", increase(s, older) / seconds);
    }
    return groups;
  }

  // The sum of one group of rateBy / sumBy, 0 when there is none.
  function total(groups) {
    let sum = 0;
    for (const value of groups.values()) sum += value;
    return sum;
  }

  // histogram_quantile(q, sum by (le) (increase(name_bucket{keep}))): the
  // q-quantile of what was observed between two scrapes, interpolated in
  // its bucket as Prometheus does; null when nothing was observed.
  function quantile(q, newer, older, name, keep) {
    const byBound = new Map();
    for (const s of select(newer, name + "_bucket", keep)) {
      addTo(byBound, parseValue(s.labels.le), increase(s, older));
    }
    const buckets = [...byBound].sort((a, b) => a[0] - b[0]);
    if (buckets.length < 2 || buckets[buckets.length - 1][0] !== Infinity) return null;
    const count = buckets[buckets.length - 1][1];
    if (!(count > 0)) return null;
    const rank = q * count;
    const i = buckets.findIndex(([, cumulative]) => cumulative >= rank);
    // In the +Inf bucket: the highest finite bound is all that is known.
    if (i === buckets.length - 1) return buckets[buckets.length - 2][0];
    const [upper, cumulative] = buckets[i];
    const [lower, below] = i === 0 ? [0, 0] : buckets[i - 1];
    if (cumulative === below) return upper;
    return lower + ((upper - lower) * (rank - below)) / (cumulative - below);
  }

  return { parse, parseLine, select, sumBy, rateBy, total, quantile };
})();
