// Compare runs: the jobs ticked (or named in ?jobs=a,b), their loss curves overlaid on one
// chart (validation or train loss), and a table of what differs: the hyperparameters whose
// values are not the same in every job, and each job's final and best results.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#4b5563", "#db2777"];
  const chart = LossChart($("compare-chart"));
  const picked = new Set((new URLSearchParams(location.search).get("jobs") || "")
    .split(",").filter(Boolean));
  const curves = new Map(); // job id -> metric points
  const jobs = new Map(); // job id -> job

  function flatten(hp, prefix = "", out = {}) {
    for (const [key, value] of Object.entries(hp || {})) {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        flatten(value, prefix + key + ".", out);
      } else {
        out[prefix + key] = value;
      }
    }
    return out;
  }

  // The hyperparameters whose values differ between the jobs (missing counts as a value).
  function differences(list) {
    const flats = list.map((job) => flatten(job.hyperparameters));
    const keys = [...new Set(flats.flatMap((f) => Object.keys(f)))].sort();
    return keys.filter((k) => new Set(flats.map((f) => JSON.stringify(f[k]))).size > 1)
      .map((k) => [k, flats.map((f) => (k in f ? JSON.stringify(f[k]) : "—"))]);
  }

  function number(v, digits) {
    return typeof v === "number" ? v.toFixed(digits) : "—";
  }

  function render() {
    const ids = [...picked].filter((id) => jobs.has(id));
    const metric = $("compare-metric").value;
    chart.drawSeries(ids.map((id, i) => ({
      name: id, color: COLORS[i % COLORS.length], dots: metric === "val_loss",
      pts: (curves.get(id) || []).filter((p) => typeof p[metric] === "number")
        .map((p) => [p.step, p[metric]]),
    })));
    if (!ids.length) {
      $("compare-head").replaceChildren();
      $("compare-body").replaceChildren(el("tr", { className: "placeholder" },
        el("td", {}, "Pick two or more jobs")));
      return;
    }
    const list = ids.map((id) => jobs.get(id));
    $("compare-head").replaceChildren(el("tr", {}, el("th", {}, ""),
      ...list.map((job) => el("th", {}, el("a", { href: UI.jobUrl(job.id) }, job.id)))));
    const result = (job, part, key) => ((job.result || {})[part] || {})[key];
    const rows = [
      ["model", list.map((j) => j.model_name)],
      ["dataset", list.map((j) => j.dataset)],
      ["status", list.map((j) => j.status)],
      ["branched from", list.map((j) => (j.origin ? j.origin.job_id + ":" + j.origin.step : "—"))],
      ...differences(list),
      ["final val_loss", list.map((j) => number(result(j, "final", "val_loss"), 4))],
      ["best val_loss", list.map((j) => number(result(j, "best", "val_loss"), 4))],
      ["final token accuracy", list.map((j) => number(result(j, "final", "val_token_accuracy"), 3))],
      ["best checkpoint", list.map((j) => ((j.result || {}).best_checkpoint ?? "—"))],
    ];
    $("compare-body").replaceChildren(...rows.map(([label, values]) => el("tr",
      { dataset: { row: label } }, el("th", {}, label), ...values.map((v) => el("td", {}, String(v))))));
  }

  async function load(id) {
    const base = "/jobs/" + encodeURIComponent(id);
    jobs.set(id, await UI.json(base));
    let after = -1;
    let points = [];
    for (;;) {
      const response = await UI.api(base + "/metrics?after_step=" + after);
      const fresh = await response.json();
      points = points.concat(fresh);
      if (!fresh.length || !response.headers.has("Link")) break;
      after = fresh[fresh.length - 1].step;
    }
    curves.set(id, points);
  }

  async function toggle(id, on) {
    if (on) {
      picked.add(id);
      try {
        await load(id);
      } catch (err) {
        picked.delete(id);
        if (err instanceof UI.ApiError && err.status !== 401) {
          UI.showBanner("Job " + id + ": " + err.message, "error");
        }
      }
    } else {
      picked.delete(id);
    }
    history.replaceState(null, "", "?jobs=" + [...picked].map(encodeURIComponent).join(","));
    render();
  }

  async function start() {
    const recent = await UI.json("/jobs?limit=100");
    const ids = new Set([...picked, ...recent.map((j) => j.id)]);
    $("compare-picker").replaceChildren(...[...ids].map((id) => {
      const box = el("input", { type: "checkbox", value: id, checked: picked.has(id) });
      box.addEventListener("change", () => toggle(id, box.checked));
      return el("label", { className: "pick", dataset: { jobId: id } }, box, " " + id);
    }));
    await Promise.all([...picked].map((id) => toggle(id, true)));
    render();
  }

  $("compare-metric").addEventListener("change", render);
  start().catch((err) => {
    if (!(err instanceof UI.ApiError && err.status === 401)) UI.showBanner(String(err), "error");
  });
})();
