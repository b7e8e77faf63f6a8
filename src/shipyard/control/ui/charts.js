// Line charts in plain SVG. A chart holds points ({time|step, key: value...}); each redraw sets the <svg>'s
// data-points (how many points it holds) and data-last (the last point's value of its first series).
import {h, svg, num} from "./dom.js";

const W = 420;
const H = 150;
const PAD = {left: 44, right: 8, top: 10, bottom: 22};

export class LineChart {
  /**
   * title; series [{key, label}] (the first is the main one); format(value) for labels; x: "time" or "step";
   * limit: points kept; windowS: seconds shown (time charts); attrs: extra attributes of the <svg>.
   */
  constructor({testid, title, series, format = num, x = "time", limit = 900, windowS = 900, attrs = {}, min = 0}) {
    this.series = series;
    this.format = format;
    this.x = x;
    this.limit = limit;
    this.windowS = windowS;
    this.min = min;
    this.points = [];
    this.legend = h("span", {class: "chart-legend"});
    this.svg = svg("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": title,
      "data-testid": testid, "data-points": "0", "data-last": "", ...attrs});
    this.element = h("figure", {class: "chart"},
      h("figcaption", {}, h("span", {class: "chart-title"}, title), this.legend), this.svg);
    this.title = title;
    this.redraw();
  }

  set(points) {
    this.points = (points || []).slice(-this.limit);
    this.redraw();
  }

  push(point) {
    const last = this.points[this.points.length - 1];
    if (last && point[this.x] !== undefined && last[this.x] === point[this.x]) this.points[this.points.length - 1] = point;
    else this.points.push(point);
    if (this.points.length > this.limit) this.points.splice(0, this.points.length - this.limit);
    this.redraw();
  }

  redraw() {
    const points = this.points;
    const main = this.series[0].key;
    const last = points.length ? points[points.length - 1][main] : null;
    this.svg.setAttribute("data-points", String(points.length));
    this.svg.setAttribute("data-last", typeof last === "number" ? String(last) : "");
    this.legend.replaceChildren(...this.series.map((s, index) => {
      const value = points.length ? points[points.length - 1][s.key] : null;
      return h("span", {class: `legend legend-${index}`}, h("i", {"aria-hidden": "true"}), `${s.label} `,
        h("b", {}, typeof value === "number" ? this.format(value) : "—"));
    }));
    const children = [];
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    let xs = points.map((p) => p[this.x]).filter((v) => typeof v === "number");
    let x0 = xs.length ? Math.min(...xs) : 0;
    let x1 = xs.length ? Math.max(...xs) : 1;
    if (this.x === "time") {
      x0 = Math.max(x0, x1 - this.windowS);
      if (x1 - x0 < 60) x0 = x1 - 60;  // at least a minute wide, so the first points start at the right
    }
    if (x1 === x0) x1 = x0 + 1;
    const values = points.flatMap((p) => this.series.map((s) => p[s.key])).filter((v) => typeof v === "number");
    let y0 = Math.min(this.min, ...values);
    if (!Number.isFinite(y0)) y0 = 0;
    let y1 = values.length ? Math.max(...values) : y0 + 1;
    if (y0 !== 0) y0 = niceFloor(y0);
    y1 = y0 === 0 ? niceCeil(y1) : y1;
    if (y1 <= y0) y1 = y0 === 0 ? 1 : y0 + Math.abs(y0) * 0.1 || 1;
    const sx = (v) => PAD.left + ((v - x0) / (x1 - x0)) * plotW;
    const sy = (v) => PAD.top + plotH - ((v - y0) / (y1 - y0)) * plotH;
    for (const fraction of [0, 0.5, 1]) {
      const value = y0 + fraction * (y1 - y0);
      const y = sy(value);
      children.push(svg("line", {x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid"}),
        svg("text", {x: PAD.left - 6, y: y + 4, class: "axis", "text-anchor": "end"}, this.format(value)));
    }
    const xLabel = (v) => (this.x === "time" ? new Date(v * 1000).toLocaleTimeString([], {hour: "2-digit",
      minute: "2-digit", second: "2-digit"}) : `step ${num(v)}`);
    if (xs.length) {
      children.push(svg("text", {x: PAD.left, y: H - 6, class: "axis", "text-anchor": "start"}, xLabel(x0)),
        svg("text", {x: W - PAD.right, y: H - 6, class: "axis", "text-anchor": "end"}, xLabel(x1)));
    } else {
      children.push(svg("text", {x: W / 2, y: H / 2, class: "chart-empty", "text-anchor": "middle"}, "no data yet"));
    }
    this.series.forEach((s, index) => {
      const segments = [];
      let segment = null;
      for (const p of points) {
        const xv = p[this.x];
        const yv = p[s.key];
        if (typeof xv !== "number" || xv < x0 || typeof yv !== "number") {
          segment = null;
          continue;
        }
        if (!segment) segments.push((segment = []));
        segment.push([sx(xv).toFixed(1), sy(yv).toFixed(1)]);
      }
      const d = segments.map((seg) => seg.map(([x, y], i) => `${i ? "L" : "M"}${x} ${y}`).join(" ")).join(" ");
      if (d) children.push(svg("path", {d, class: `line line-${index}`}));
      for (const seg of segments) {  // a lone point (between gaps) is a dot, so it shows
        if (seg.length === 1) children.push(svg("circle", {cx: seg[0][0], cy: seg[0][1], r: 3, class: `dot dot-${index}`}));
      }
    });
    this.svg.replaceChildren(svg("title", {}, `${this.title}: ${typeof last === "number" ? this.format(last) : "no data"}`),
      ...children);
  }
}

/** The smallest of 1, 2, 2.5, 5 x 10^k not below v. */
function niceCeil(v) {
  if (v <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= v - 1e-12) return step * power;
  return 10 * power;
}

/** A round number not above v (for axes that do not start at zero). */
function niceFloor(v) {
  if (v <= 0) return -niceCeil(-v);
  const power = 10 ** Math.floor(Math.log10(v));
  return Math.floor(v / power) * power;
}

/** A small inline line (no axes) of points' ``key`` over time, for list rows; null values leave gaps. */
export function sparkline(points, key, {max = null, label = key, testid = null} = {}) {
  const width = 96;
  const height = 22;
  const values = points.map((p) => p[key]).filter((v) => typeof v === "number");
  const top = max ?? Math.max(1e-9, ...values);
  const times = points.map((p) => p.time);
  const t1 = times.length ? times[times.length - 1] : 0;
  const t0 = Math.min(times.length ? times[0] : 0, t1 - 60);
  let d = "";
  let pen = false;
  for (const p of points) {
    if (typeof p[key] !== "number") {
      pen = false;
      continue;
    }
    const x = ((p.time - t0) / Math.max(1, t1 - t0)) * (width - 2) + 1;
    const y = height - 2 - (Math.min(p[key], top) / top) * (height - 4);
    d += `${pen ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)} `;
    pen = true;
  }
  return svg("svg", {viewBox: `0 0 ${width} ${height}`, width, height, class: "sparkline", role: "img",
    "aria-label": `${label} over the last 15 minutes`, "data-testid": testid, "data-points": String(points.length)},
  svg("line", {x1: 0, x2: width, y1: height - 1, y2: height - 1, class: "spark-base"}),
  d ? svg("path", {d, class: "spark-line"}) : null);
}
