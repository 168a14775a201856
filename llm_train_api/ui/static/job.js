// One job, live: its fields and progress, the loss curve (GET /metrics?after_step= fetches
// only new points), the events timeline, a log tail, checkpoints to download, pause, resume
// and cancel.
// Polls every 2 s until the job reaches a final status, then refreshes everything once more
// and stops.
"use strict";

(() => {
  const { el } = UI;
  const id = document.body.dataset.jobId;
  const base = "/jobs/" + encodeURIComponent(id);
  const chart = LossChart(document.getElementById("loss-chart"));
  // A DPO job's implicit rewards, beta * (log pi - log ref), shown once a point has them.
  const rewardsChart = LossChart(document.getElementById("rewards-chart"), {
    title: "Rewards against step",
    label: "reward",
    series: [
      { key: "rewards/margins", name: "margin", cls: "series-train", dots: false },
      { key: "val_rewards/margins", name: "validation margin", cls: "series-val",
        dots: true },
      { key: "rewards/chosen", name: "chosen", cls: "series-chosen", dots: false },
      { key: "rewards/rejected", name: "rejected", cls: "series-rejected", dots: false },
    ],
  });
  const $ = (name) => document.getElementById(name);
  let points = [];
  let lastStep = -1;
  let attempts = null;
  let tick = 0;
  let job = null;

  function text(name, value) {
    $(name).textContent = value === null || value === undefined || value === "" ? "—" : value;
  }

  function link(name, value, href) {
    if (!value) text(name, value);
    else $(name).replaceChildren(el("a", { href }, value));
  }

  function renderJob() {
    $("job-status").replaceChildren(UI.badge(job.status));
    document.body.dataset.status = job.status;
    link("job-model", job.model_name, UI.modelUrl(job.model_name));
    // Fine-tuning jobs: the model kind and method, validation data, the result's name.
    const hf = job.model_kind === "hf";
    text("job-kind", hf ? "fine-tuning a Hugging Face-format model"
      : job.model_kind === "builtin" ? "built-in GPT" : null);
    text("job-method", hf ? (job.hyperparameters.method || "lora")
      : job.model_kind === "builtin" ? "from scratch" : null);
    text("job-dataset", job.dataset);
    text("job-validation", job.validation_dataset || (hf ? "held out from the dataset" : null));
    // The result is a model once the job succeeded: fine_tuned_model where the job says
    // so, else output_model.
    const result = job.fine_tuned_model || (job.status === "succeeded" && job.output_model);
    if (result) link("job-output-model", result, UI.modelUrl(result));
    else text("job-output-model", job.output_model && job.output_model + " (once it succeeds)");
    // A job created through the OpenAI-compatible API (/v1): where it came from, the
    // suffix of its OpenAI model name, and its metadata pairs.
    const openai = job.api === "openai";
    $("job-openai-row").hidden = !openai;
    $("job-metadata-row").hidden = !openai;
    if (openai) {
      text("job-openai", "created through /v1/fine_tuning/jobs (api: openai)" +
        (job.suffix ? ", suffix " + job.suffix : ""));
      const pairs = Object.entries(job.metadata || {}).map(([k, v]) => k + "=" + v);
      text("job-metadata", pairs.join(", "));
    }
    text("job-attempts", job.attempts + " of " + job.max_attempts);
    text("job-worker", job.worker);
    text("job-created", UI.time(job.created_at));
    text("job-started", job.started_at && UI.time(job.started_at));
    text("job-finished", job.finished_at && UI.time(job.finished_at));
    const origin = job.origin;
    if (origin) link("job-origin", origin.job_id + " at step " + origin.step, UI.jobUrl(origin.job_id));
    else text("job-origin", null);
    const summary = job.result || {};
    const bestLoss = (summary.best || {}).val_loss;
    text("job-best", summary.best_checkpoint === undefined || summary.best_checkpoint === null
      ? null : "step " + summary.best_checkpoint
        + (typeof bestLoss === "number" ? " (val_loss " + bestLoss.toFixed(4) + ")" : ""));
    const p = job.progress || {};
    const bar = $("job-progress");
    bar.value = p.fraction !== undefined ? p.fraction : job.status === "succeeded" ? 1 : 0;
    const parts = [];
    if (p.phase) parts.push(p.phase);
    if (p.step !== undefined) parts.push("step " + p.step + (p.total_steps ? " / " + p.total_steps : ""));
    if (p.eta_s !== undefined && !UI.FINAL.has(job.status)) parts.push("ETA " + UI.duration(p.eta_s));
    if (p.tokens_per_s) parts.push(Math.round(p.tokens_per_s) + " tokens/s");
    $("job-progress-text").textContent = parts.join(" · ");
    $("job-error").hidden = !job.error_message;
    $("job-error").textContent = job.error_message || "";
    const final = UI.FINAL.has(job.status);
    $("cancel-button").hidden = final || !$("cancel-confirm").hidden;
    if (final) $("cancel-confirm").hidden = true;
    // Pause while queued or running (not once a pause is pending); resume while paused, or
    // to withdraw a pending pause. The server decides: these only offer what it allows.
    const pausing = Boolean(job.pause_requested_at);
    $("pause-button").hidden = !["queued", "running"].includes(job.status) || pausing;
    $("resume-button").hidden = !(job.status === "paused" || pausing);
    if (pausing) parts.push("pausing…");
    $("job-progress-text").textContent = parts.join(" · ");
    document.title = "Job " + job.id + " (" + job.status + ") · llm_train_api";
  }

  async function refreshMetrics() {
    if (attempts !== null && job.attempts !== attempts) {
      // A new run resumed from a checkpoint and rewrote the steps after it: start over.
      points = [];
      lastStep = -1;
    }
    attempts = job.attempts;
    let more;
    do {
      const response = await UI.api(base + "/metrics?after_step=" + lastStep);
      const fresh = await response.json();
      if (fresh.length) {
        points = points.concat(fresh);
        lastStep = fresh[fresh.length - 1].step;
      }
      more = fresh.length > 0 && response.headers.has("Link"); // a next page is waiting
    } while (more);
    chart.draw(points);
    const last = points[points.length - 1];
    if (last) {
      const val = [...points].reverse().find((p) => typeof p.val_loss === "number");
      $("loss-latest").textContent = "step " + last.step
        + (typeof last.train_loss === "number" ? " · train " + last.train_loss.toFixed(4) : "")
        + (val ? " · validation " + val.val_loss.toFixed(4) + " (step " + val.step + ")" : "")
        + " · " + points.length + " points";
    }
    drawRewards();
  }

  function drawRewards() {
    const rewarded = points.filter((p) => typeof p["rewards/margins"] === "number");
    $("rewards-panel").hidden = !rewarded.length;
    if (!rewarded.length) return;
    rewardsChart.draw(points);
    const last = rewarded[rewarded.length - 1];
    const val = [...points].reverse()
      .find((p) => typeof p["val_rewards/accuracies"] === "number");
    $("rewards-latest").textContent = "step " + last.step
      + " · margin " + last["rewards/margins"].toFixed(4)
      + " · reward accuracy " + last["rewards/accuracies"].toFixed(3)
      + (val ? " · validation accuracy " + val["val_rewards/accuracies"].toFixed(3)
        + ", margin " + val["val_rewards/margins"].toFixed(4) + " (step " + val.step + ")"
        : "");
  }

  async function refreshEvents() {
    const events = await UI.json(base + "/events?limit=1000");
    $("events").replaceChildren(...events.map((e) => el("li", { dataset: { kind: e.kind } },
      el("time", { dateTime: e.at, title: e.at }, UI.time(e.at)),
      el("span", { className: "event-kind" }, e.kind),
      e.from_status ? UI.badge(e.from_status) : null,
      e.from_status && e.to_status ? " → " : null,
      e.to_status ? UI.badge(e.to_status) : null,
      e.attempt ? el("span", { className: "muted small" }, " attempt " + e.attempt) : null,
      e.actor ? el("span", { className: "muted small" }, " by " + e.actor) : null,
      e.message ? el("div", { className: "event-message" }, e.message) : null)));
  }

  // The trainer's protocol lines (PROTOCOL prefix: the JSON events a worker reads) are
  // hidden unless "show protocol lines" is ticked; the toggle re-renders the last tail
  // without fetching it again.
  const PROTOCOL = "@@llm_train_api";
  let logText = "";

  function renderLog() {
    const log = $("log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const lines = logText.split("\n");
    const shown = $("log-protocol").checked ? lines
      : lines.filter((line) => !line.startsWith(PROTOCOL));
    const hidden = lines.length - shown.length;
    log.textContent = shown.join("\n");
    $("log-hidden").textContent = hidden ? hidden + " protocol line" + (hidden === 1 ? "" : "s")
      + " hidden" : "";
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  async function refreshLog() {
    const response = await UI.api(base + "/logs?tail=" + $("log-lines").value);
    logText = await response.text();
    renderLog();
  }

  async function refreshArtifacts() {
    const files = await UI.json(base + "/artifacts");
    const rows = files.map((f) => el("tr", { dataset: { name: f.name, kind: f.kind } },
      el("td", {}, f.name),
      el("td", {}, f.kind),
      el("td", { title: f.size_bytes + " bytes" }, UI.bytes(f.size_bytes)),
      el("td", {}, UI.time(f.modified_at)),
      el("td", {}, el("button", { type: "button", className: "download",
        onclick: () => save(f.name) }, "Download"))));
    if (!rows.length) rows.push(el("tr", { className: "placeholder" }, el("td", { colSpan: 5 }, "None yet")));
    $("artifacts-body").replaceChildren(...rows);
  }

  function metric(value, digits) {
    return typeof value === "number" ? value.toFixed(digits) : "—";
  }

  async function refreshCheckpoints() {
    const kept = await UI.json(base + "/checkpoints");
    const rows = kept.map((c) => el("tr", { dataset: { step: c.step, status: c.status } },
      el("td", {}, String(c.step)),
      el("td", {}, c.is_best ? "★" : ""),
      el("td", {}, c.status),
      el("td", {}, metric(c.metrics.train_loss, 4)),
      el("td", {}, metric(c.metrics.val_loss, 4)),
      el("td", {}, metric(c.metrics.val_perplexity, 2)),
      el("td", {}, metric(c.metrics.val_token_accuracy, 3)),
      el("td", { title: c.size + " bytes" }, UI.bytes(c.size)),
      el("td", {}, c.created_at ? UI.time(c.created_at) : "—"),
      el("td", { className: "mono small", title: c.sha256 || "" }, (c.sha256 || "").slice(0, 12)),
      el("td", {}, c.status === "good" ? el("button", { type: "button", className: "download",
        onclick: () => saveCheckpoint(c.step) }, "Download") : null)));
    if (!rows.length) rows.push(el("tr", { className: "placeholder" }, el("td", { colSpan: 11 }, "None yet")));
    $("checkpoints-body").replaceChildren(...rows);
  }

  async function saveCheckpoint(stepNumber) {
    const name = id + "-step-" + stepNumber + ".tar";
    try {
      await UI.download(base + "/checkpoints/" + stepNumber + "/archive", name);
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        UI.showBanner("Download of checkpoint " + stepNumber + " failed: " + err.message, "error");
      }
    }
  }

  async function save(name) {
    try {
      await UI.download(base + "/artifacts/" + encodeURIComponent(name), name);
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        UI.showBanner("Download of " + name + " failed: " + err.message, "error");
      }
    }
  }

  async function step() {
    try {
      job = await UI.json(base);
    } catch (err) {
      if (err instanceof UI.ApiError && err.status === 404) {
        UI.showBanner("Job " + id + " does not exist (or was deleted).", "error", "missing");
        $("cancel-button").hidden = true;
        $("pause-button").hidden = true;
        $("resume-button").hidden = true;
        return false;
      }
      throw err;
    }
    renderJob();
    const final = UI.FINAL.has(job.status);
    await Promise.all([refreshMetrics(), refreshEvents(), refreshLog(),
      final || tick % 3 === 0 ? refreshArtifacts() : null,
      final || tick % 3 === 0 ? refreshCheckpoints() : null]);
    tick += 1;
    return !final; // a final job changes no more: this was the last full refresh
  }

  const now = UI.poll(step, 2000);
  $("log-lines").addEventListener("change", () => refreshLog().catch(() => {}));
  $("log-protocol").addEventListener("change", renderLog);

  $("cancel-button").addEventListener("click", () => {
    $("cancel-button").hidden = true;
    $("cancel-confirm").hidden = false;
  });
  $("cancel-no").addEventListener("click", () => {
    $("cancel-confirm").hidden = true;
    $("cancel-button").hidden = !job || UI.FINAL.has(job.status);
  });
  // POST /jobs/{id}/pause or /resume, then show the job as the answer has it.
  async function pauseOrResume(verb, button) {
    button.disabled = true;
    try {
      job = await UI.json(base + "/" + verb, { method: "POST" });
      renderJob();
      const state = job.pause_requested_at ? "pausing (its run checkpoints, then stops)"
        : job.status;
      UI.showBanner("Job " + id + " is " + state + ".", "info", "pause");
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        UI.showBanner((verb === "pause" ? "Pause" : "Resume") + " failed: " + err.message,
          "error");
      }
    } finally {
      button.disabled = false;
      now();
    }
  }
  $("pause-button").addEventListener("click", () => pauseOrResume("pause", $("pause-button")));
  $("resume-button").addEventListener("click",
    () => pauseOrResume("resume", $("resume-button")));

  $("cancel-yes").addEventListener("click", async () => {
    $("cancel-yes").disabled = true;
    try {
      job = await UI.json(base + "/cancel", { method: "POST" });
      $("cancel-confirm").hidden = true;
      renderJob();
      UI.showBanner("Job " + id + " is " + job.status + ".", "info", "cancel");
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        UI.showBanner("Cancel failed: " + err.message, "error");
      }
    } finally {
      $("cancel-yes").disabled = false;
      now();
    }
  });
})();
