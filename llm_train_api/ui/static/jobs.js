// The jobs table: GET /jobs every 2 s (newest 100, optionally one status), rendered with
// textContent only.
"use strict";

(() => {
  const { el } = UI;
  const body = document.getElementById("jobs-body");
  const filter = document.getElementById("status-filter");
  const PAGE = 100;

  const params = new URLSearchParams(location.search);
  if (UI.STATUSES.includes(params.get("status"))) filter.value = params.get("status");

  function progressCell(job) {
    const p = job.progress || {};
    let fraction = p.fraction;
    if (fraction === undefined && job.status === "succeeded") fraction = 1;
    const text = p.step !== undefined
      ? p.step + (p.total_steps ? " / " + p.total_steps : "") : (p.phase || "");
    return el("td", { className: "progress-cell" },
      fraction !== undefined ? el("progress", { max: 1, value: fraction }) : null,
      el("span", { className: "muted small" }, text));
  }

  function row(job) {
    const status = UI.badge(job.status);
    if (job.error_message) status.title = job.error_message;
    return el("tr", { dataset: { jobId: job.id, status: job.status } },
      el("td", {}, el("a", { href: UI.jobUrl(job.id) }, job.id),
        // Jobs created through the OpenAI-compatible API (/v1) carry a badge.
        job.api === "openai"
          ? el("span", { className: "badge badge-openai", title: "Created through /v1" }, "OpenAI")
          : null),
      el("td", {}, status),
      el("td", {}, job.model_name),
      el("td", {}, job.dataset),
      progressCell(job),
      el("td", { title: UI.time(job.created_at) }, UI.age(job.created_at)));
  }

  // Rows are kept per job and rebuilt only when the job changed, so a poll does not
  // disturb a selection or a hover; the age cell is the one thing that always moves.
  const rendered = new Map(); // job id -> {signature, tr}

  function signature(job) {
    return JSON.stringify([job.status, job.model_name, job.dataset, job.progress,
      job.error_message]);
  }

  async function refresh() {
    const query = new URLSearchParams({ limit: PAGE });
    if (filter.value) query.set("status", filter.value);
    const response = await UI.api("/jobs?" + query);
    const jobs = await response.json();
    const seen = new Set();
    const rows = jobs.map((job) => {
      seen.add(job.id);
      const sig = signature(job);
      let entry = rendered.get(job.id);
      if (!entry || entry.signature !== sig) {
        entry = { signature: sig, tr: row(job) };
        rendered.set(job.id, entry);
      } else {
        entry.tr.lastChild.textContent = UI.age(job.created_at);
      }
      return entry.tr;
    });
    for (const id of [...rendered.keys()]) if (!seen.has(id)) rendered.delete(id);
    if (!rows.length) {
      rows.push(el("tr", { className: "placeholder" },
        el("td", { colSpan: 6 }, filter.value ? "No " + filter.value + " jobs." : "No jobs yet.")));
    }
    const current = [...body.children];
    if (current.length !== rows.length || current.some((tr, i) => tr !== rows[i])) {
      body.replaceChildren(...rows);
    }
    const more = (response.headers.get("Link") || "").includes('rel="next"');
    document.getElementById("jobs-count").textContent =
      more ? "newest " + jobs.length + " shown" : jobs.length + " job" + (jobs.length === 1 ? "" : "s");
    document.getElementById("last-updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  }

  const now = UI.poll(refresh, 2000);
  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("status", filter.value);
    else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    now();
  });
})();
