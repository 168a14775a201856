// Datasets: list (GET /datasets), upload (PUT /datasets/{name} with the file as the raw
// body; XMLHttpRequest for its upload progress events), delete with a second click to confirm.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);

  function deleteButton(name) {
    const button = el("button", { type: "button", className: "danger delete" }, "Delete");
    let armed = null;
    button.addEventListener("click", async () => {
      if (!armed) {
        button.textContent = "Confirm delete";
        armed = setTimeout(() => { armed = null; button.textContent = "Delete"; }, 5000);
        return;
      }
      clearTimeout(armed);
      button.disabled = true;
      try {
        await UI.api("/datasets/" + encodeURIComponent(name), { method: "DELETE" });
        UI.showBanner("Deleted dataset " + name + ".", "info", "datasets");
      } catch (err) {
        if (err instanceof UI.ApiError && err.status !== 401) {
          UI.showBanner("Cannot delete " + name + ": " + err.message, "error", "datasets");
        }
      }
      refresh();
    });
    return button;
  }

  async function refresh() {
    let datasets;
    try {
      datasets = await UI.json("/datasets");
    } catch (err) {
      return;
    }
    // Datasets are named per owner: a user's own ("owner" set), published ones (an
    // admin's, for everyone), and the built-ins.
    const ownerBadge = (d) => {
      if (d.builtin) return el("span", { className: "badge badge-builtin" }, "built-in");
      if (d.owner) return el("span", { className: "badge badge-owner" }, "owner: " + d.owner);
      return el("span", { className: "badge badge-published" }, "published");
    };
    const rows = datasets.map((d) => el("tr", { dataset: { name: d.name } },
      el("td", {}, d.name, ownerBadge(d)),
      el("td", {}, d.format + (d.kind ? " · " + d.kind : "")),
      el("td", { title: d.size_bytes + " bytes" }, UI.bytes(d.size_bytes)),
      el("td", {}, d.lines === null ? "—" : d.lines),
      el("td", { className: "mono", title: d.sha256 || "" }, d.sha256 ? d.sha256.slice(0, 12) : "—"),
      el("td", { title: d.created_at }, UI.time(d.created_at)),
      el("td", {}, d.builtin ? null : deleteButton(d.name))));
    if (!rows.length) rows.push(el("tr", { className: "placeholder" }, el("td", { colSpan: 7 }, "No datasets.")));
    $("datasets-body").replaceChildren(...rows);
  }

  $("dataset-file").addEventListener("change", () => {
    const file = $("dataset-file").files[0];
    if (file && !$("dataset-name").value) {
      $("dataset-name").value = file.name.replace(/\.(txt|jsonl)$/i, "");
    }
  });

  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("dataset-file").files[0];
    const name = $("dataset-name").value.trim();
    if (!file || !name) return;
    const type = /\.jsonl$/i.test(file.name) ? "application/jsonl" : "text/plain";
    const xhr = new XMLHttpRequest();
    const bar = $("upload-progress");
    const result = $("upload-result");
    xhr.open("PUT", UI.root + "/datasets/" + encodeURIComponent(name));
    xhr.setRequestHeader("Content-Type", type);
    UI.authHeaders().forEach((value, key) => xhr.setRequestHeader(key, value));
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    });
    xhr.addEventListener("load", () => {
      bar.hidden = true;
      $("upload-button").disabled = false;
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status === 200 || xhr.status === 201) {
        result.className = "small ok-text";
        result.textContent = (xhr.status === 201 ? "Uploaded " : "Replaced ") + body.name + ": "
          + UI.bytes(body.size_bytes) + (body.lines !== null ? ", " + body.lines + " lines" : "") + ".";
        $("upload-form").reset();
        refresh();
        return;
      }
      const message = (body && body.message) || xhr.status + " " + xhr.statusText;
      if (xhr.status === 401) UI.unauthorized(message);
      result.className = "small error-text";
      result.textContent = "Upload failed: " + message;
    });
    xhr.addEventListener("error", () => {
      bar.hidden = true;
      $("upload-button").disabled = false;
      result.className = "small error-text";
      result.textContent = "Upload failed: the service cannot be reached.";
    });
    bar.value = 0;
    bar.hidden = false;
    $("upload-button").disabled = true;
    result.textContent = "";
    xhr.send(file);
  });

  $("datasets-refresh").addEventListener("click", refresh);
  document.addEventListener("ui:token", refresh);
  refresh();
})();
