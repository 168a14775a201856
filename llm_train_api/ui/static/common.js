// Shared by every dashboard page: the API client (bearer token from sessionStorage), the
// token box, the message banner, polling, delete buttons, uploads, and small DOM and
// formatting helpers.
// Job data only ever reaches the page through textContent and attribute setters: never
// through innerHTML, so a job name cannot inject markup.
"use strict";

const UI = (() => {
  const TOKEN_KEY = "llm_train_api.token";
  const root = document.body.dataset.root || "";
  const STATUSES = ["queued", "running", "paused", "succeeded", "failed", "cancelled"];
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const t = token();
    if (t) headers.set("Authorization", "Bearer " + t);
    return headers;
  }

  // fetch() against the API under this page's root; throws ApiError on anything but 2xx.
  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(root + path, {
        method: options.method || "GET",
        headers: authHeaders(options.headers),
        body: options.body,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (err) {
      showBanner("The service cannot be reached (" + err.message + "). Retrying…", "error",
        "network");
      throw new ApiError(0, "unreachable");
    }
    if (response.ok) {
      clearBanner("network");
      return response;
    }
    const body = await response.json().catch(() => null);
    const message = (body && body.message) || response.status + " " + response.statusText;
    if (response.status === 401) unauthorized(message);
    else if (response.status === 403) showBanner("Not allowed with this token: " + message, "error");
    throw new ApiError(response.status, message, body);
  }

  async function json(path, options) {
    return (await api(path, options)).json();
  }

  // ------------------------------------------------------------------ banner and token
  const banner = document.getElementById("banner");

  function showBanner(text, kind, tag) {
    banner.textContent = text;
    banner.className = "banner banner-" + (kind || "info");
    banner.dataset.tag = tag || "";
    banner.hidden = false;
  }

  function clearBanner(tag) {
    if (!tag || banner.dataset.tag === tag) banner.hidden = true;
  }

  function unauthorized(message) {
    const had = token();
    if (had) sessionStorage.removeItem(TOKEN_KEY);
    showBanner((had ? "The server refused your token (401): " : "This server needs an API "
      + "token (401): ") + message + " Enter a token to continue.", "error", "auth");
    openTokenPanel();
    renderAuthState();
  }

  const panel = document.getElementById("token-panel");
  const input = document.getElementById("token-input");

  function openTokenPanel() {
    if (!panel.hidden) return; // polls keep hitting 401: do not steal the focus each time
    panel.hidden = false;
    input.focus();
  }

  function renderAuthState() {
    const has = !!token();
    document.getElementById("auth-state").textContent = has ? "Token set" : "No token";
    document.getElementById("logout-button").hidden = !has;
    document.getElementById("token-button").textContent = has ? "Change token" : "Set token";
  }

  document.getElementById("token-button").addEventListener("click", openTokenPanel);
  document.getElementById("token-cancel").addEventListener("click", () => { panel.hidden = true; });
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    input.value = "";
    panel.hidden = true;
    clearBanner("auth");
    renderAuthState();
    document.dispatchEvent(new CustomEvent("ui:token"));
  });
  document.getElementById("logout-button").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    renderAuthState();
    showBanner("Logged out: the token is forgotten in this tab.", "info", "auth");
    document.dispatchEvent(new CustomEvent("ui:token"));
  });
  renderAuthState();

  // ------------------------------------------------------------------ polling
  // Calls `step` now and then `intervalMs` after each run ends (never two at once). `step`
  // returns false to stop. A new token triggers an immediate run. While the tab is hidden
  // nothing is fetched (no load on the server for a forgotten tab); showing it catches up.
  function poll(step, intervalMs) {
    let timer = null;
    let running = false;
    let stopped = false;
    async function run() {
      if (running || stopped) return;
      clearTimeout(timer);
      if (document.hidden) {
        timer = setTimeout(run, intervalMs);
        return;
      }
      running = true;
      let again = true;
      try {
        again = (await step()) !== false;
      } catch (err) {
        if (!(err instanceof ApiError)) console.error(err);  // a bug here: make it visible
      } finally {
        running = false;
      }
      if (again) timer = setTimeout(run, intervalMs);
      else stopped = true;
    }
    document.addEventListener("ui:token", () => { stopped = false; run(); });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) run(); });
    run();
    return run;
  }

  // ------------------------------------------------------------------ DOM and formats
  // el("td", {className: "x", title: "y"}, "text", otherNode): text children become text nodes.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(status) {
    const known = STATUSES.includes(status) ? status : "unknown";
    return el("span", { className: "badge badge-" + known, dataset: { status: String(status) } },
      String(status));
  }

  function age(iso) {
    if (!iso) return "—";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d";
  }

  function time(iso) {
    return iso ? new Date(iso).toLocaleString() : "—";
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function jobUrl(id) {
    return root + "/ui/jobs/" + encodeURIComponent(id);
  }

  // The models page, scrolled to the model's row (its id is "model-" + the name).
  function modelUrl(name) {
    return root + "/ui/models#model-" + encodeURIComponent(name);
  }

  // Rows are rendered after the page loaded, too late for the browser's own jump to the
  // URL's #fragment: scroll to that element and mark it (class "target"), once per page.
  let revealed = false;
  function revealTarget() {
    const id = decodeURIComponent(location.hash.slice(1));
    const node = id && !revealed && document.getElementById(id);
    if (!node) return;
    revealed = true;
    node.classList.add("target");
    node.scrollIntoView({ block: "center" });
  }

  // Downloads need the token, so a plain link will not do: fetch, then save the blob.
  async function download(path, filename) {
    const blob = await (await api(path)).blob();
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // ------------------------------------------------------------------ delete and upload
  // A Delete button that asks for a second click within 5 s, then DELETEs `path`, says how
  // it went in the banner (tagged `tag`) and calls `after`.
  function deleteButton({ path, kind, name, tag, after }) {
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
        await api(path, { method: "DELETE" });
        showBanner("Deleted " + kind + " " + name + ".", "info", tag);
      } catch (err) {
        if (err instanceof ApiError && err.status !== 401) {
          showBanner("Cannot delete " + name + ": " + err.message, "error", tag);
        }
      }
      after();
    });
    return button;
  }

  // PUT `file` to `path` with XMLHttpRequest (fetch reports no upload progress): `bar` shows
  // the progress and `button` is disabled meanwhile; `result` then says how it went, with
  // `success(body, created)` after a 2xx (`after` runs next) and `failed` + the reason else.
  function upload({ path, file, type, bar, button, result, success, failed, after }) {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", root + path);
    xhr.setRequestHeader("Content-Type", type);
    authHeaders().forEach((value, key) => xhr.setRequestHeader(key, value));
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
    });
    const done = () => { bar.hidden = true; button.disabled = false; };
    xhr.addEventListener("load", () => {
      done();
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status === 200 || xhr.status === 201) {
        result.className = "small ok-text";
        result.textContent = success(body, xhr.status === 201);
        after();
        return;
      }
      const message = (body && body.message) || xhr.status + " " + xhr.statusText;
      if (xhr.status === 401) unauthorized(message);
      result.className = "small error-text";
      result.textContent = failed + message;
    });
    xhr.addEventListener("error", () => {
      done();
      result.className = "small error-text";
      result.textContent = failed + "the service cannot be reached.";
    });
    bar.value = 0;
    bar.hidden = false;
    button.disabled = true;
    result.textContent = "";
    xhr.send(file);
  }

  return { ApiError, FINAL, STATUSES, api, json, poll, el, badge, age, time, bytes, duration,
    jobUrl, modelUrl, revealTarget, download, showBanner, clearBanner, unauthorized, token,
    authHeaders, root, deleteButton, upload };
})();
