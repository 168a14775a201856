// Datasets: list (GET /datasets), upload (PUT /datasets/{name} with the file as the raw
// body; XMLHttpRequest for its upload progress events), delete with a second click to confirm.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);

  const deleteButton = (name) => UI.deleteButton({
    path: "/datasets/" + encodeURIComponent(name), kind: "dataset", name, tag: "datasets",
    after: refresh });

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
    UI.upload({
      path: "/datasets/" + encodeURIComponent(name), file,
      type: /\.jsonl$/i.test(file.name) ? "application/jsonl" : "text/plain",
      bar: $("upload-progress"), button: $("upload-button"), result: $("upload-result"),
      success: (body, created) => (created ? "Uploaded " : "Replaced ") + body.name + ": "
        + UI.bytes(body.size_bytes) + (body.lines !== null ? ", " + body.lines + " lines" : "") + ".",
      failed: "Upload failed: ",
      after: () => { $("upload-form").reset(); refresh(); },
    });
  });

  $("datasets-refresh").addEventListener("click", refresh);
  document.addEventListener("ui:token", refresh);
  refresh();
})();
