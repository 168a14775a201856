// The loss curve as inline SVG, drawn here (no chart library, nothing fetched from a CDN):
// axes with "nice" ticks, train loss as a line, validation loss as a line with dots, a
// legend. LossChart(container).draw(points) redraws from the full list of metric points;
// drawSeries([{name, pts: [[step, loss]], color, dots}]) draws any curves (compare runs).
// LossChart(container, options) draws other series of the same points: options.series
// lists { key, name, cls, dots } (key: the metric's name in a point), options.label names
// the y axis and options.title the chart (a DPO job's rewards use this).
// Each axis runs from a round tick at or below the smallest value to a round tick at or
// above the largest, so the labels cover the whole range, also for a single point or a
// flat curve; step ticks are whole numbers.
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

  // A round step (1, 2 or 5 times a power of ten) near span / count; at least 1 when
  // `integer`.
  function niceStep(span, count, integer) {
    const raw = span / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw * (1 - 1e-9));
    return integer ? Math.max(1, Math.round(step)) : step;
  }

  // The axis for values in [lo, hi]: about `count` ticks, the first at or below lo and the
  // last at or above hi, which are also the axis's ends. A single value gets a range
  // around it; an axis whose values are all >= 0 does not go below 0.
  function axis(lo, hi, count, integer) {
    const nonNegative = lo >= 0;
    if (hi === lo) {
      const spread = integer ? 1 : Math.abs(lo) * 0.1 || 1;
      lo -= spread;
      hi += spread;
    }
    if (nonNegative) lo = Math.max(0, lo);
    const step = niceStep(hi - lo, count, integer);
    const first = Math.floor(lo / step + 1e-9) * step;
    const last = Math.ceil(hi / step - 1e-9) * step;
    const values = [];
    for (let i = 0; first + i * step <= last + step * 1e-9; i += 1) {
      values.push(Number((first + i * step).toPrecision(12)));
    }
    const digits = Math.min(12, Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
    return { lo: values[0], hi: values[values.length - 1], values, step, digits };
  }

  // A tick's text, with as many decimals as the step needs, so neighbours never read the
  // same; an exponent (with as many digits as the step needs) from a million up.
  function label(v, step, digits) {
    if (Math.abs(v) >= 1e6) {
      const exp = Math.floor(Math.log10(Math.abs(v))) - Math.floor(Math.log10(step) + 1e-9);
      return v.toExponential(Math.min(12, Math.max(0, exp)));
    }
    return v.toFixed(digits);
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

  const LOSS = {
    title: "Loss against step",
    label: "loss",
    series: [
      { key: "train_loss", name: "train loss", cls: "series-train", dots: false },
      { key: "val_loss", name: "validation loss", cls: "series-val", dots: true },
    ],
  };

  function LossChart(container, options) {
    const opts = options || LOSS;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "loss-chart",
      "aria-label": opts.title });
    container.replaceChildren(root);

    function draw(points) {
      drawSeries(opts.series.map((s) => {
        const pts = thin(points.filter((p) => finite(p[s.key]))).map((p) => [p.step, p[s.key]]);
        return { name: s.name, cls: s.cls, pts, dots: s.dots || pts.length === 1 };
      }));
    }

    // Each series: name, pts ([step, value] pairs), and either cls (a CSS class that
    // colours it) or color (an SVG stroke/fill attribute), and dots.
    function drawSeries(series) {
      root.replaceChildren(svg("title", {}, opts.title));
      const all = series.flatMap((s) => s.pts);
      if (!all.length) {
        root.append(svg("text", { x: W / 2, y: H / 2, class: "chart-empty",
          "text-anchor": "middle" }, "No metrics yet"));
        return;
      }
      const ys = all.map((p) => p[1]);
      let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
      const pad = (y1 - y0) * 0.02; // keep the curve off the frame when it ends on a tick
      const xAxis = axis(Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0])),
        6, true);
      const yAxis = axis(y0 >= 0 ? Math.max(0, y0 - pad) : y0 - pad, y1 + pad, 5, false);
      [y0, y1] = [yAxis.lo, yAxis.hi];
      const [x0, x1] = [xAxis.lo, xAxis.hi];
      const px = (x) => M.left + ((x - x0) / (x1 - x0)) * (W - M.left - M.right);
      const py = (y) => H - M.bottom - ((y - y0) / (y1 - y0)) * (H - M.top - M.bottom);

      const grid = svg("g", { class: "grid-lines" });
      const axes = svg("g", { class: "axes" });
      for (const t of yAxis.values) {
        const y = py(t).toFixed(1);
        grid.append(svg("line", { x1: M.left, x2: W - M.right, y1: y, y2: y }));
        axes.append(svg("text", { x: M.left - 8, y, "text-anchor": "end",
          "dominant-baseline": "middle", class: "tick tick-y", "data-value": t },
        label(t, yAxis.step, yAxis.digits)));
      }
      for (const t of xAxis.values) {
        const x = px(t).toFixed(1);
        grid.append(svg("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom }));
        axes.append(svg("text", { x, y: H - M.bottom + 16, "text-anchor": "middle",
          class: "tick tick-x", "data-value": t }, label(t, xAxis.step, xAxis.digits)));
      }
      axes.append(svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom,
        class: "axis" }));
      axes.append(svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom,
        y2: H - M.bottom, class: "axis" }));
      axes.append(svg("text", { x: (M.left + W - M.right) / 2, y: H - 6,
        "text-anchor": "middle", class: "axis-label" }, "step"));
      axes.append(svg("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
        transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})`, class: "axis-label" },
      opts.label));
      root.append(grid, axes);

      const line = (pts) => pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`)
        .join(" ");
      const paint = (s) => (s.color ? { stroke: s.color, fill: s.color } : {});
      for (const s of series) {
        if (!s.pts.length) continue;
        const cls = s.cls || "series-custom";
        const g = svg("g", { class: "series " + cls, "data-series": s.name });
        g.append(svg("polyline", { points: line(s.pts), fill: "none",
          ...(s.color ? { stroke: s.color } : {}) }));
        if (s.dots) {
          for (const [x, y] of s.pts.slice(-200)) {
            g.append(svg("circle", { cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 3,
              ...(s.color ? { fill: s.color } : {}) }));
          }
        }
        root.append(g);
      }

      const width = Math.max(150, 40 + 7 * Math.max(...series.map((s) => s.name.length)));
      const legend = svg("g", { class: "legend",
        transform: `translate(${W - M.right - width} ${M.top + 4})` });
      legend.append(svg("rect", { x: 0, y: 0, width, height: 8 + 18 * series.length,
        class: "legend-box" }));
      series.forEach((s, i) => {
        const y = 15 + i * 18;
        const key = svg("g", { class: "series " + (s.cls || "series-custom") });
        key.append(svg("line", { x1: 10, x2: 34, y1: y, y2: y, ...paint(s) }));
        legend.append(key, svg("text", { x: 42, y, "dominant-baseline": "middle" }, s.name));
      });
      root.append(legend);
    }

    draw([]);
    return { draw, drawSeries };
  }

  return LossChart;
})();
