// The New job form: model and dataset pickers (GET /models, GET /datasets), hyperparameter
// fields built from the chosen model's `hyperparameters` schema (GET /models/{name}: a
// built-in GPT's own, or the fine-tuning trainer's) plus a raw JSON object for the rest, a dry run
// (POST /jobs?dry_run=true) whose answer, a fine-tuning job's `plan` included, is shown
// before anything is created, then POST /jobs and on to the job's page.
// Create job stays disabled until a dry run of exactly the current form succeeded; a 4xx
// puts each field's messages under that field.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);
  const form = $("new-job-form");
  const params = new URLSearchParams(location.search);

  // A schema entry of type "object" (the fine-tuning trainer's `lora`) becomes one field per
  // key under a dotted name: lora.r is {"lora": {"r": ...}}. LoRA's fields hide for method
  // full.
  function schemaFields(schema) {
    return schema.flatMap((p) => (p.type === "object" && p.properties
      ? p.properties.map((q) => ({ ...q, name: p.name + "." + q.name, lora: p.name === "lora" }))
      : [p]));
  }

  let models = [];
  let datasets = [];
  let model = null; // GET /models/{name} of the chosen model
  let previewed = null; // the body of the last successful dry run, as JSON
  let loading = 0; // guards against a slow answer for a model chosen before the current one

  // ------------------------------------------------------------------ pickers
  function modelLabel(m) {
    if (m.kind === "builtin") {
      return m.name + " (builtin: GPT " + m.n_layer + "×" + m.n_embd + ", "
        + m.param_count.toLocaleString() + " parameters)";
    }
    const origin = m.source === "job" ? ", fine-tuned from " + (m.base_model || "?") : "";
    return m.name + " (hf: " + (m.architecture || "?") + ", "
      + m.param_count.toLocaleString() + " parameters" + origin
      + (m.owner ? ", owner " + m.owner : "") + ")";
  }

  function datasetLabel(d) {
    return d.name + " (" + (d.kind ? d.kind + ", " : "") + d.format + ")";
  }

  function fillSelect(select, items, label, first, wanted) {
    const groups = new Map();
    for (const item of items) {
      const group = item.kind === "builtin" ? "Built-in GPTs" : item.kind === "hf"
        ? "Hugging Face-format models" : null;
      const option = el("option", { value: item.name, dataset: { kind: item.kind || "" } },
        label(item));
      if (!group) {
        groups.set(option, option);
        continue;
      }
      if (!groups.has(group)) groups.set(group, el("optgroup", { label: group }));
      groups.get(group).append(option);
    }
    const keep = wanted || select.value;
    select.replaceChildren(...(first ? [first] : []), ...groups.values());
    if (keep && items.some((i) => i.name === keep)) select.value = keep;
  }

  async function loadPickers() {
    try {
      [models, datasets] = await Promise.all([UI.json("/models"), UI.json("/datasets")]);
    } catch (err) {
      return;
    }
    fillSelect($("nj-model"), models, modelLabel, null, params.get("model"));
    fillSelect($("nj-dataset"), datasets, datasetLabel, null, params.get("dataset"));
    fillSelect($("nj-validation"), datasets, datasetLabel,
      el("option", { value: "" }, "none: hold out a share of the dataset"));
    await chooseModel();
  }

  async function chooseModel() {
    const name = $("nj-model").value;
    const mine = ++loading;
    if (!name) return;
    let described;
    try {
      described = await UI.json("/models/" + encodeURIComponent(name));
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        UI.showBanner("Cannot read model " + name + ": " + err.message, "error", "new-job");
      }
      return;
    }
    if (mine !== loading) return;
    model = described;
    const hf = model.kind === "hf";
    for (const node of document.querySelectorAll(".hf-only")) node.hidden = !hf;
    $("nj-model-info").textContent = hf
      ? "Fine-tuning: context " + (model.context_length ?? "?") + " tokens, "
        + (model.has_chat_template ? "with" : "no") + " chat template."
      : "Trained from scratch by the built-in trainer" + (model.description
        ? ": " + model.description : ".");
    buildHyperparameters(schemaFields(model.hyperparameters || []));
    $("nj-hparams-source").textContent = hf ? "(the fine-tuning trainer's schema)"
      : "(the model's schema)";
    describeDataset();
    changed();
  }

  function describeDataset() {
    const d = datasets.find((x) => x.name === $("nj-dataset").value);
    let note = "";
    if (d && model) {
      if (model.kind === "builtin" && d.kind && d.kind !== "text") {
        note = " Built-in GPTs train text only.";
      } else if (model.kind === "hf" && d.kind === "chat" && !model.has_chat_template) {
        note = " This model has no chat template.";
      }
    }
    $("nj-dataset-info").textContent = d ? "Kind: " + (d.kind || "folder") + ", "
      + (d.lines === null ? "" : d.lines + " lines, ") + UI.bytes(d.size_bytes) + "." + note : "";
  }

  // ------------------------------------------------------------------ hyperparameters
  function kindOf(p) {
    if (p.choices && p.choices.length) return "choice";
    return { int: "integer", float: "number", bool: "boolean" }[p.type] || p.type;
  }

  function shown(v) {
    return v === null || v === undefined ? "none" : String(v);
  }

  function buildHyperparameters(schema) {
    const fields = schema.map((p) => {
      const kind = kindOf(p);
      const id = "hp-" + p.name.replace(/\./g, "-");
      let input;
      if (kind === "choice" || kind === "boolean") {
        const choices = kind === "boolean" ? ["true", "false"] : p.choices;
        input = el("select", { id },
          el("option", { value: "" }, "default (" + shown(p.default) + ")"),
          ...choices.map((c) => el("option", { value: String(c) }, String(c))));
      } else {
        const numeric = kind === "integer" || kind === "number";
        input = el("input", { id, type: numeric ? "number" : "text",
          placeholder: "default: " + shown(p.default) });
        if (kind === "integer") input.step = "1";
        if (kind === "number") input.step = "any";
        if (typeof p.minimum === "number") input.min = String(p.minimum);
        if (typeof p.maximum === "number") input.max = String(p.maximum);
      }
      if (p.name === "max_seq_length" && model && model.context_length) {
        input.max = String(model.context_length);
        input.placeholder = "default: " + Math.min(1024, model.context_length);
      }
      input.dataset.name = p.name;
      input.dataset.kind = kind;
      return el("div", { className: "field" + (p.lora ? " lora-only" : ""),
        dataset: { field: "hyperparameters." + p.name } },
      el("label", { htmlFor: id, title: p.doc || "" }, p.name),
      input,
      p.doc ? el("div", { className: "muted small" }, p.doc) : null);
    });
    $("nj-hparams").replaceChildren(...fields);
    loraFields();
  }

  // LoRA's settings mean nothing to a full fine-tuning: hidden (and not sent) then.
  function loraFields() {
    const method = $("hp-method");
    const full = !!method && method.value === "full";
    for (const node of document.querySelectorAll(".lora-only")) node.hidden = full;
  }

  function setPath(target, dotted, value) {
    const keys = dotted.split(".");
    let node = target;
    for (const key of keys.slice(0, -1)) {
      if (typeof node[key] !== "object" || node[key] === null) node[key] = {};
      node = node[key];
    }
    node[keys[keys.length - 1]] = value;
  }

  function merge(into, from) {
    for (const [key, value] of Object.entries(from)) {
      if (value && typeof value === "object" && !Array.isArray(value)
          && into[key] && typeof into[key] === "object" && !Array.isArray(into[key])) {
        merge(into[key], value);
      } else {
        into[key] = value;
      }
    }
    return into;
  }

  // ------------------------------------------------------------------ the request body
  class FormProblem extends Error {
    constructor(field, message) {
      super(message);
      this.field = field;
    }
  }

  function hyperparameters() {
    const out = {};
    for (const input of $("nj-hparams").querySelectorAll("[data-name]")) {
      if (input.closest("[hidden]")) continue;
      if (input.validity && input.validity.badInput) {
        throw new FormProblem("hyperparameters." + input.dataset.name, "Not a number.");
      }
      const raw = input.value.trim();
      if (raw === "") continue;
      const kind = input.dataset.kind;
      let value = raw;
      if (kind === "integer" || kind === "number") {
        value = Number(raw);
        if (!Number.isFinite(value)) {
          throw new FormProblem("hyperparameters." + input.dataset.name, "Not a number.");
        }
      } else if (kind === "boolean") {
        value = raw === "true";
      } else if (kind === "string or array of strings" && raw.startsWith("[")) {
        try {
          value = JSON.parse(raw);
        } catch (err) {
          throw new FormProblem("hyperparameters." + input.dataset.name,
            "Not a JSON list: " + err.message);
        }
      }
      setPath(out, input.dataset.name, value);
    }
    const extra = $("nj-extra").value.trim();
    if (extra) {
      let parsed;
      try {
        parsed = JSON.parse(extra);
      } catch (err) {
        throw new FormProblem("extra", "Not JSON: " + err.message);
      }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        throw new FormProblem("extra", "Must be a JSON object, such as {\"seed\": 1}.");
      }
      merge(out, parsed);
    }
    return out;
  }

  function body() {
    const out = { model_name: $("nj-model").value, dataset: $("nj-dataset").value,
      hyperparameters: hyperparameters() };
    const jobId = $("nj-job-id").value.trim();
    if (jobId) out.job_id = jobId;
    const priority = $("nj-priority").value.trim();
    if (priority !== "") {
      out.priority = Number(priority);
      if (!Number.isFinite(out.priority)) throw new FormProblem("priority", "Not a number.");
    }
    if (model && model.kind === "hf") {
      if ($("nj-validation").value) out.validation_dataset = $("nj-validation").value;
      const output = $("nj-output-model").value.trim();
      if (output) out.output_model = output;
    }
    return out;
  }

  // ------------------------------------------------------------------ errors
  function clearErrors() {
    for (const node of form.querySelectorAll(".field-error")) node.remove();
    for (const node of form.querySelectorAll(".has-error")) node.classList.remove("has-error");
    $("nj-errors").hidden = true;
    $("nj-errors").replaceChildren();
  }

  // marshmallow's shape ({field: [messages] or {sub: ...}}) as [dotted path, message] pairs.
  function flatten(errors, prefix, out) {
    if (Array.isArray(errors)) {
      for (const m of errors) {
        if (m && typeof m === "object") flatten(m, prefix, out);
        else out.push([prefix, String(m)]);
      }
    } else if (errors && typeof errors === "object") {
      for (const [key, value] of Object.entries(errors)) {
        flatten(value, prefix ? prefix + "." + key : key, out);
      }
    } else if (errors !== null && errors !== undefined) {
      out.push([prefix, String(errors)]);
    }
    return out;
  }

  // The form's element for a dotted path, or for its nearest parent path that has one
  // (hyperparameters.lora.rank lands on the hyperparameters fieldset).
  function holder(path) {
    for (let p = path; p; p = p.includes(".") ? p.slice(0, p.lastIndexOf(".")) : "") {
      const found = [...form.querySelectorAll("[data-field]")]
        .find((node) => node.dataset.field === p && !node.closest("[hidden]"));
      if (found) return found;
    }
    return null;
  }

  function fieldError(path, message) {
    const node = holder(path);
    if (!node) return false;
    node.classList.add("has-error");
    let box = [...node.children].find((c) => c.classList.contains("field-error"));
    if (!box) {
      box = el("div", { className: "field-error error-text small" });
      const legend = node.querySelector(":scope > legend");
      if (legend) legend.after(box);
      else node.append(box);
    }
    const where = node.dataset.field === path ? "" : path.slice(node.dataset.field.length + 1);
    box.append(el("div", { dataset: { path } }, (where ? where + ": " : "") + message));
    return true;
  }

  function showErrors(message, errors) {
    clearErrors();
    const pairs = [];
    for (const [location, fields] of Object.entries(errors || {})) {
      for (const [path, text] of flatten(fields, "", [])) {
        pairs.push([location === "json" ? path : location + "." + path, text]);
      }
    }
    const list = $("nj-errors");
    list.append(el("p", {}, message));
    if (pairs.length) {
      list.append(el("ul", {}, ...pairs.map(([path, text]) =>
        el("li", { dataset: { path } }, el("code", {}, path || "request"), ": " + text))));
    }
    for (const [path, text] of pairs) fieldError(path, text);
    list.hidden = false;
  }

  // ------------------------------------------------------------------ preview and submit
  const PLAN_ROWS = [
    ["kind", "Data kind"], ["records", "Records read"], ["examples", "Examples kept"],
    ["tokens", "Tokens (after truncation)"], ["truncated", "Examples truncated"],
    ["dropped", "Examples dropped"], ["train_sequences", "Training sequences"],
    ["val_sequences", "Validation sequences"], ["train_tokens", "Training tokens"],
    ["val_tokens", "Validation tokens"], ["steps_per_epoch", "Steps per epoch"],
    ["total_steps", "Total steps"], ["method", "Method"],
  ];

  function figure(v) {
    return typeof v === "number" ? v.toLocaleString() : v === null || v === undefined
      ? "—" : String(v);
  }

  function memoryText(memory) {
    return Object.entries(memory || {}).filter(([key]) => key !== "total")
      .map(([key, v]) => key.replace(/_/g, " ") + " " + (key === "trainable_params"
        ? figure(v) : UI.bytes(v))).join(" · ");
  }

  function showPreview(job) {
    const rows = [];
    const row = (key, name, value, title) => rows.push(el("tr", { dataset: { key } },
      el("th", {}, name), el("td", { title: title || "" }, value)));
    const plan = job.plan;
    if (plan) {
      $("nj-plan-summary").textContent = "Valid. The fine-tuning run will be (counted by the "
        + "trainer's own data preparation; nothing was created yet):";
      for (const [key, name] of PLAN_ROWS) if (key in plan) row(key, name, figure(plan[key]));
      if ("estimated_memory_bytes" in plan) {
        row("estimated_memory_bytes", "Estimated memory per process",
          plan.estimated_memory_bytes === null ? "—" : UI.bytes(plan.estimated_memory_bytes),
          plan.estimated_memory_bytes + " bytes");
      }
      if (plan.memory) row("memory", "Memory by component", memoryText(plan.memory));
    } else {
      $("nj-plan-summary").textContent = "Valid: the job would be created as follows "
        + "(nothing was created yet).";
      row("model_kind", "Model kind", figure(job.model_kind));
      row("hyperparameters", "Hyperparameters", JSON.stringify(job.hyperparameters));
    }
    row("priority", "Priority", figure(job.priority));
    $("nj-plan-body").replaceChildren(...rows);
    $("nj-plan").hidden = false;
    $("nj-plan").classList.remove("stale");
  }

  function current() {
    try {
      return JSON.stringify(body());
    } catch (err) {
      return null;
    }
  }

  // Any change after a dry run makes it stale: Create job waits for a new one.
  function changed() {
    const ready = previewed !== null && current() === previewed;
    $("nj-submit").disabled = !ready;
    if ($("nj-plan").hidden) return;
    $("nj-plan").classList.toggle("stale", !ready);
    $("nj-state").textContent = ready ? "Nothing is created until you click Create job."
      : "The form changed since the preview: preview it again.";
  }

  async function send(dryRun) {
    clearErrors();
    let payload;
    try {
      payload = body();
    } catch (err) {
      if (!(err instanceof FormProblem)) throw err;
      showErrors("Fix the form first.", { json: { [err.field]: [err.message] } });
      return null;
    }
    return UI.json("/jobs" + (dryRun ? "?dry_run=true" : ""), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload) });
  }

  function refused(err, what) {
    if (!(err instanceof UI.ApiError)) throw err;
    if (err.status === 401) return;
    const body = err.body || {};
    showErrors(what + " refused (" + err.status + "): " + err.message, body.errors);
  }

  $("nj-preview").addEventListener("click", async () => {
    const snapshot = current();
    $("nj-preview").disabled = true;
    $("nj-state").textContent = "Checking (a fine-tuning dry run counts the data's tokens)…";
    try {
      const job = await send(true);
      if (!job) {
        $("nj-state").textContent = "";
        return;
      }
      previewed = snapshot;
      showPreview(job);
      $("nj-state").textContent = "Nothing is created until you click Create job.";
    } catch (err) {
      previewed = null;
      $("nj-plan").hidden = true;
      if (err instanceof UI.ApiError && err.status === 503) {
        // The server could not plan the run (no planner there, or too slow): the job
        // itself may be fine, so it may still be created.
        previewed = snapshot;
        $("nj-state").textContent = "";
        showErrors("No preview: " + err.message, null);
      } else {
        $("nj-state").textContent = "";
        refused(err, "The dry run was");
      }
    } finally {
      $("nj-preview").disabled = false;
      changed();
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if ($("nj-submit").disabled) return;
    $("nj-submit").disabled = true;
    $("nj-state").textContent = "Creating…";
    try {
      const job = await send(false);
      if (job) location.assign(UI.jobUrl(job.id));
    } catch (err) {
      $("nj-state").textContent = "";
      refused(err, "The job was");
      $("nj-submit").disabled = false;
    }
  });

  $("nj-model").addEventListener("change", () => { chooseModel(); });
  $("nj-dataset").addEventListener("change", describeDataset);
  form.addEventListener("input", changed);
  form.addEventListener("change", (event) => {
    if (event.target.id === "hp-method") loraFields();
    changed();
  });
  document.addEventListener("ui:token", loadPickers);
  loadPickers();
})();
