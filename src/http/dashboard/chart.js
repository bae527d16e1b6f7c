// chart.js: a small SVG line chart. One line per series over the last
// minutes, a y axis from zero to a rounded maximum, and a legend with each
// series' latest value.
//
// Each chart also writes what it holds into data-* attributes of its
// <figure>: data-latest and data-peak (JSON objects, series label to its
// newest and its highest value in view) and data-points, so that a test
// can read the charts' data from the DOM without looking at pixels.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// The smallest of 1, 2, 2.5, 5 x 10^n that is at least `value`.
function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value * 0.999999) return step * power;
  }
  return 10 * power;
}

class LineChart {
  // `id`: the figure's id; `title` and `unit` for its caption; `format`
  // turns a value into text; `minimum`: the least top of the y axis;
  // `maximum`: a fixed top (percentages).
  constructor(parent, { id, title, unit, format, minimum = 0, maximum = null }) {
    this.format = format;
    this.minimum = minimum;
    this.maximum = maximum;
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.figure.id = id;
    const caption = document.createElement("figcaption");
    caption.textContent = title + " ";
    if (unit) {
      const small = document.createElement("span");
      small.className = "unit";
      small.textContent = unit;
      caption.append(small);
    }
    this.svg = svgElement("svg", { role: "img", "aria-label": title });
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.figure.append(caption, this.svg, this.legend);
    parent.append(this.figure);
  }

  // `times`: seconds, oldest first; `series`: [{label, color, dashed,
  // values}], values aligned with `times`, null where unknown; `span`: the
  // seconds shown, up to the newest time.
  render(times, series, span) {
    const width = this.svg.clientWidth || 300;
    const height = this.svg.clientHeight || 116;
    const left = 44;
    const right = width - 4;
    const top = 6;
    const bottom = height - 14;
    this.svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    this.svg.replaceChildren();

    const newest = times.length ? times[times.length - 1] : 0;
    const oldest = newest - span;
    const latest = {};
    const peak = {};
    let highest = 0;
    for (const s of series) {
      let last = null;
      let most = null;
      s.values.forEach((value, i) => {
        if (value === null || times[i] < oldest) return;
        last = value;
        most = most === null ? value : Math.max(most, value);
      });
      latest[s.label] = last;
      peak[s.label] = most;
      if (most !== null) highest = Math.max(highest, most);
    }
    const ceiling = this.maximum ?? niceCeiling(Math.max(highest, this.minimum));
    const x = (t) => left + ((t - oldest) / span) * (right - left);
    const y = (v) => bottom - (Math.min(v, ceiling) / ceiling) * (bottom - top);

    for (const fraction of [0, 0.5, 1]) {
      const at = y(ceiling * fraction);
      this.svg.append(svgElement("line", { class: "grid", x1: left, x2: right, y1: at, y2: at }));
      const label = svgElement("text", { class: "axis", x: left - 4, y: at + 3, "text-anchor": "end" });
      label.textContent = this.format(ceiling * fraction);
      this.svg.append(label);
    }
    for (const [text, at, anchor] of [
      [`−${Math.round(span)} s`, left, "start"],
      ["now", right, "end"],
    ]) {
      const label = svgElement("text", { class: "axis", x: at, y: height - 2, "text-anchor": anchor });
      label.textContent = text;
      this.svg.append(label);
    }

    let drawn = 0;
    for (const s of series) {
      // A path per run of known values: unknown values leave a gap.
      let d = "";
      let pen = false;
      s.values.forEach((value, i) => {
        if (value === null || times[i] < oldest) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(value).toFixed(1)}`;
        pen = true;
        drawn++;
      });
      if (d === "") continue;
      if (series.length === 1) {
        const known = s.values.map((v, i) => [v, times[i]]).filter(([v, t]) => v !== null && t >= oldest);
        const first = x(known[0][1]).toFixed(1);
        const last = x(known[known.length - 1][1]).toFixed(1);
        const area = `${d}L${last},${bottom}L${first},${bottom}Z`;
        this.svg.append(svgElement("path", { class: "area", d: area, fill: s.color }));
      }
      const line = svgElement("path", { class: "line", d, stroke: s.color });
      if (s.dashed) line.setAttribute("stroke-dasharray", "4 3");
      this.svg.append(line);
    }
    if (drawn === 0) {
      const empty = svgElement("text", { class: "empty", x: (left + right) / 2, y: (top + bottom) / 2, "text-anchor": "middle" });
      empty.textContent = series.length ? "nothing yet" : "no series yet";
      this.svg.append(empty);
    }

    this.legend.replaceChildren(
      ...series.map((s) => {
        const item = document.createElement("span");
        item.dataset.series = s.label;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = s.color;
        const value = document.createElement("b");
        value.textContent = latest[s.label] === null ? "–" : this.format(latest[s.label]);
        item.append(swatch, s.label + " ", value);
        return item;
      }),
    );
    this.figure.dataset.latest = JSON.stringify(latest);
    this.figure.dataset.peak = JSON.stringify(peak);
    this.figure.dataset.points = String(drawn);
  }
}
