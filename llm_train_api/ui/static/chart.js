// The loss curve as inline SVG, drawn here (no chart library, nothing fetched from a CDN):
// axes with "nice" ticks, train loss as a line, validation loss as a line with dots, a
// legend. LossChart(container).draw(points) redraws from the full list of metric points.
"use strict";

const LossChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const W = 720;
  const H = 320;
  const M = { left: 60, right: 20, top: 18, bottom: 44 };
  const MAX_DRAWN = 2000; // more vertices than pixels only costs time

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // About `count` round tick values (1, 2 or 5 times a power of ten) covering [lo, hi].
  function ticks(lo, hi, count) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Number(v.toPrecision(12)));
    }
    return out;
  }

  function label(v) {
    return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
      ? v.toExponential(1) : String(Number(v.toPrecision(4)));
  }

  // Every k-th point (and the last), so a long run still draws quickly.
  function thin(points) {
    if (points.length <= MAX_DRAWN) return points;
    const k = Math.ceil(points.length / MAX_DRAWN);
    const out = points.filter((_, i) => i % k === 0);
    if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
    return out;
  }

  function finite(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function LossChart(container) {
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "loss-chart",
      "aria-label": "Loss against step" });
    container.replaceChildren(root);

    function draw(points) {
      const train = thin(points.filter((p) => finite(p.train_loss)))
        .map((p) => [p.step, p.train_loss]);
      const val = thin(points.filter((p) => finite(p.val_loss))).map((p) => [p.step, p.val_loss]);
      root.replaceChildren(svg("title", {}, "Loss against step"));
      if (!train.length && !val.length) {
        root.append(svg("text", { x: W / 2, y: H / 2, class: "chart-empty",
          "text-anchor": "middle" }, "No metrics yet"));
        return;
      }
      const all = train.concat(val);
      let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
      let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
      if (x0 === x1) x1 = x0 + 1;
      const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.05 || 1;
      y0 -= pad;
      y1 += pad;
      const xTicks = ticks(x0, x1, 6);
      const yTicks = ticks(y0, y1, 5);
      const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
      const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);

      const grid = svg("g", { class: "grid-lines" });
      const axes = svg("g", { class: "axes" });
      for (const t of yTicks) {
        const y = py(t).toFixed(1);
        grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y }));
        axes.append(svg("text", { x: M.left - 8, y, "text-anchor": "end",
          "dominant-baseline": "middle", class: "tick" }, label(t)));
      }
      for (const t of xTicks) {
        const x = px(t).toFixed(1);
        grid.append(svg("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom }));
        axes.append(svg("text", { x, y: H - M.bottom + 16, "text-anchor": "middle",
          class: "tick" }, label(t)));
      }
      axes.append(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom,
        class: "axis" }));
      axes.append(svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom,
        y2: H - M.bottom, class: "axis" }));
      axes.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 6,
        "text-anchor": "middle", class: "axis-label" }, "step"));
      axes.append(svg("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
        transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})`, class: "axis-label" },
      "loss"));
      root.append(grid, axes);

      const line = (pts) => pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`)
        .join(" ");
      const series = [
        { name: "train loss", cls: "series-train", pts: train, dots: train.length === 1 },
        { name: "validation loss", cls: "series-val", pts: val, dots: true },
      ];
      for (const s of series) {
        if (!s.pts.length) continue;
        const g = svg("g", { class: "series " + s.cls, "data-series": s.cls });
        g.append(svg("polyline", { points: line(s.pts), fill: "none" }));
        if (s.dots) {
          for (const [x, y] of s.pts.slice(-200)) {
            g.append(svg("circle", { cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 3 }));
          }
        }
        root.append(g);
      }

      const legend = svg("g", { class: "legend",
        transform: `translate(${W - M.right - 150} ${M.top + 4})` });
      legend.append(svg("rect", { x: 0, y: 0, width: 150, height: 44, class: "legend-box" }));
      series.forEach((s, i) => {
        const y = 15 + i * 18;
        const key = svg("g", { class: "series " + s.cls });
        key.append(svg("line", { x1: 10, x2: 34, y1: y, y2: y }));
        legend.append(key, svg("text", { x: 42, y, "dominant-baseline": "middle" }, s.name));
      });
      root.append(legend);
    }

    draw([]);
    return { draw };
  }

  return LossChart;
})();
