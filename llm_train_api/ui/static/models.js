// Models: list (GET /models: built-in GPTs, imported and root Hugging Face-format models,
// fine-tuned ones with a link to the job that made them),
// import a tar archive (PUT /models/{name}, XMLHttpRequest for its upload progress),
// download a Hugging Face-format one as a tar (GET /models/{name}/archive), delete
// an imported or fine-tuned one with a second click to confirm.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);

  const deleteButton = (model) => UI.deleteButton({
    path: "/models/" + encodeURIComponent(model.name)
      + (model.owner ? "?owner=" + encodeURIComponent(model.owner) : ""),
    kind: "model", name: model.name, tag: "models", after: refresh });

  // GET /models/{name}/archive, the folder as a tar that from_pretrained loads once unpacked.
  function downloadButton(m) {
    const query = m.owner ? "?owner=" + encodeURIComponent(m.owner) : "";
    const button = el("button", { type: "button", className: "download",
      title: "The model's files as a tar archive" }, "Download");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await UI.download("/models/" + encodeURIComponent(m.name) + "/archive" + query,
          m.name + ".tar");
      } catch (err) {
        UI.showBanner("Download of " + m.name + " failed: " + err.message, "error", "models");
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  // A fine-tuning job's result: its base model and method, and a link to the job.
  function fineTuned(m) {
    return el("span", { className: "fine-tuned" },
      el("span", { className: "badge badge-published" }, m.owner ? "fine-tuned, owner: "
        + m.owner : "fine-tuned"),
      el("span", { className: "muted small" }, " from " + (m.base_model || "?")
        + (m.method ? " (" + m.method + ") " : " ") + "by job "),
      m.job_id ? el("a", { href: UI.jobUrl(m.job_id), className: "small" }, m.job_id) : "?");
  }

  function originBadge(m) {
    if (m.kind === "builtin") return el("span", { className: "badge badge-builtin" }, "built-in");
    if (m.source === "root") return el("span", { className: "badge badge-builtin" }, "root folder");
    if (m.source === "job") return fineTuned(m);
    if (m.owner) return el("span", { className: "badge badge-owner" }, "owner: " + m.owner);
    return el("span", { className: "badge badge-published" }, "published");
  }

  async function refresh() {
    let models;
    try {
      models = await UI.json("/models");
    } catch (err) {
      return;
    }
    const dash = "—";
    const rows = models.map((m) => el("tr", { id: "model-" + m.name, dataset: { name: m.name,
      source: m.source || m.kind } },
      el("td", {}, m.name, originBadge(m)),
      el("td", {}, m.kind),
      el("td", {}, m.architecture || "GPT " + m.n_layer + "×" + m.n_embd),
      el("td", { title: m.param_count + " parameters" }, m.param_count.toLocaleString()),
      el("td", {}, m.kind === "builtin" ? m.block_size : (m.context_length ?? dash)),
      el("td", {}, m.size_bytes === undefined ? dash : UI.bytes(m.size_bytes)),
      el("td", { className: "mono", title: m.sha256 || "" }, m.sha256 ? m.sha256.slice(0, 12) : dash),
      el("td", { title: m.created_at || "" }, m.created_at ? UI.time(m.created_at) : dash),
      el("td", {}, m.kind === "hf" ? downloadButton(m) : null,
        m.source === "upload" || m.source === "job" ? deleteButton(m) : null)));
    $("models-body").replaceChildren(...rows);
    UI.revealTarget();
  }

  $("model-file").addEventListener("change", () => {
    const file = $("model-file").files[0];
    if (file && !$("model-name").value) {
      $("model-name").value = file.name.replace(/\.(tar\.gz|tgz|tar)$/i, "");
    }
  });

  $("import-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("model-file").files[0];
    const name = $("model-name").value.trim();
    if (!file || !name) return;
    UI.upload({
      path: "/models/" + encodeURIComponent(name), file,
      type: /\.(gz|tgz)$/i.test(file.name) ? "application/gzip" : "application/x-tar",
      bar: $("import-progress"), button: $("import-button"), result: $("import-result"),
      success: (body, created) => (created ? "Imported " : "Replaced ") + body.name + ": "
        + body.architecture + ", " + body.param_count.toLocaleString() + " parameters.",
      failed: "Import failed: ",
      after: () => { $("import-form").reset(); refresh(); },
    });
  });

  $("models-refresh").addEventListener("click", refresh);
  document.addEventListener("ui:token", refresh);
  refresh();
})();
