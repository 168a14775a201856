// Webhooks: list the caller's endpoints (GET /webhooks), register one (POST /webhooks: the
// secret is shown once), delete one with a second click, and show an endpoint's recent
// deliveries (GET /webhooks/{id}/deliveries), refreshed while shown.
"use strict";

(() => {
  const { el } = UI;
  const $ = (name) => document.getElementById(name);
  let shown = null; // the endpoint whose deliveries are on the page

  async function refresh() {
    let hooks;
    try {
      hooks = await UI.json("/webhooks");
    } catch (err) {
      return;
    }
    const rows = hooks.map((h) => el("tr", { dataset: { id: h.id } },
      el("td", { className: "mono" }, h.url),
      el("td", {}, h.events.join(", ")),
      el("td", {}, h.scope === "all" ? "every job" : "own jobs"),
      el("td", {}, h.owner || "—"),
      el("td", { title: h.created_at }, UI.time(h.created_at)),
      el("td", {}, showButton(h)),
      el("td", {}, UI.deleteButton({ path: "/webhooks/" + encodeURIComponent(h.id),
        kind: "webhook", name: h.url, tag: "webhooks", after: () => {
          if (shown === h.id) { shown = null; $("deliveries-panel").hidden = true; }
          refresh();
        } }))));
    if (!rows.length) rows.push(el("tr", { className: "placeholder" },
      el("td", { colSpan: 7 }, "No webhooks.")));
    $("webhooks-body").replaceChildren(...rows);
  }

  function showButton(hook) {
    const button = el("button", { type: "button", className: "show-deliveries" }, "Deliveries");
    button.addEventListener("click", () => {
      shown = hook.id;
      $("deliveries-of").textContent = hook.url;
      $("deliveries-panel").hidden = false;
      deliveries.run();
    });
    return button;
  }

  async function loadDeliveries() {
    if (!shown) return;
    const items = await UI.json("/webhooks/" + encodeURIComponent(shown) + "/deliveries?limit=50");
    const rows = items.map((d) => el("tr", { dataset: { id: d.id, state: d.state } },
      el("td", { className: "mono" }, d.id),
      el("td", {}, d.event_type),
      el("td", {}, el("a", { href: UI.jobUrl(d.job_id) }, d.job_id)),
      el("td", {}, el("span", { className: "badge badge-" + (d.state === "delivered"
        ? "succeeded" : d.state === "failed" ? "failed" : "queued") }, d.state)),
      el("td", {}, d.attempts),
      el("td", { title: d.last_error || "" }, d.last_status_code !== null
        ? "HTTP " + d.last_status_code : (d.last_error || "—")),
      el("td", { title: d.last_attempt_at || "" }, UI.time(d.last_attempt_at)),
      el("td", { title: d.next_attempt_at || "" }, UI.time(d.next_attempt_at))));
    if (!rows.length) rows.push(el("tr", { className: "placeholder" },
      el("td", { colSpan: 8 }, "Nothing sent yet.")));
    $("deliveries-body").replaceChildren(...rows);
  }

  const deliveries = { run: () => {} };

  $("webhook-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const events = Array.from($("webhook-events").selectedOptions).map((o) => o.value);
    const result = $("webhook-result");
    result.textContent = "";
    try {
      const hook = await UI.json("/webhooks", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ url: $("webhook-url").value.trim(), events }) });
      result.className = "small ok-text";
      result.textContent = "Registered " + hook.id + ".";
      $("webhook-secret").textContent = "Signing secret (shown once): " + hook.secret;
      $("webhook-secret").hidden = false;
      $("webhook-form").reset();
      refresh();
    } catch (err) {
      if (err instanceof UI.ApiError && err.status !== 401) {
        const fields = err.body && err.body.errors && err.body.errors.json;
        result.className = "small error-text";
        result.textContent = "Not registered: " + (fields
          ? Object.values(fields).flat().join(" ") : err.message);
      }
    }
  });

  $("webhooks-refresh").addEventListener("click", () => { refresh(); deliveries.run(); });
  document.addEventListener("ui:token", refresh);
  refresh();
  deliveries.run = UI.poll(loadDeliveries, 5000);
})();
