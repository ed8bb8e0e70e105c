// The Models view: the store's versions from GET /models, and the admin's changes (activate, roll back, and
// shadow and canary where the server offers them). Uses app.js's helpers ($, callApi, showMessage, describeError, errorDetail, fact, cell).
// The admin key lives in this closure only: never in storage, a cookie or the URL, and gone when the page reloads.
"use strict";

const modelsView = (() => {
  // The start of GET /models's 409 when FASHION_MODEL_PATH serves a single file: a setting, not a fault.
  const NO_STORE = "this server serves one file";
  let adminKey = "";
  let busy = false;
  let shown = null; // the last GET /models body, for the stop buttons and the rollback hint

  async function load() {
    const message = $("models-message");
    showMessage(message, "Reading the versions…");
    let result;
    try {
      result = await callApi("/models");
    } catch (error) {
      showMessage(message, `Could not reach the server: ${error.message}.`, "error");
      return;
    }
    const { response, body } = result;
    if (!response.ok || !body) {
      shown = null;
      $("models-store").hidden = true;
      if (response.status === 409 && errorDetail(body).startsWith(NO_STORE)) {
        showMessage(message, "This server serves one file, not a model store: there are no versions to list or change.");
        return;
      }
      showMessage(message, describeError(response, body), "error");
      if (response.status === 401) openKeyPanel();
      return;
    }
    shown = body;
    showModels(body);
    $("models-store").hidden = false;
    const count = body.versions.length;
    showMessage(message, `${count} version${count === 1 ? "" : "s"} in the store · read at ${clock()}.`);
  }

  function clock() {
    return new Date().toLocaleTimeString("en-GB");
  }

  function showModels(body) {
    showSummary(body);
    const note = $("models-note");
    note.hidden = !body.note;
    // The server's sentence says what this worker serves instead, and why; it starts in lower case.
    note.textContent = body.note ? `${body.note.charAt(0).toUpperCase()}${body.note.slice(1)}.` : "";
    const versions = [...body.versions].sort(newestFirst);
    const table = $("versions");
    table.querySelector("tbody").replaceChildren(...versions.map((version) => versionRow(version, body)));
    showChoices(versions);
    const before = body.history && body.history.length ? body.history[body.history.length - 1] : null;
    $("rollback-hint").textContent = before ? `to ${before}, which served before` : "nothing served before this one";
    for (const role of ["shadow", "canary"]) {
      $(`${role}-stop`).hidden = !body[role];
      $(`${role}-stop`).textContent = body[role] ? `Stop ${role} (${body[role].version})` : `Stop ${role}`;
    }
  }

  function newestFirst(a, b) {
    return (b.created || "").localeCompare(a.created || "") || a.version.localeCompare(b.version);
  }

  function showSummary(body) {
    const facts = [["Serving", body.serving || "none"]];
    if (body.state_serving !== body.serving) facts.push(["The store names", body.state_serving || "none"]);
    facts.push(["Last good", body.last_good || "none"], ["State generation", String(body.generation)]);
    if (body.shadow) facts.push(["Shadow", `${body.shadow.version} at ${percentText(body.shadow.percent)}`, shadowDetail(body.shadow)]);
    if (body.canary) {
      const answered = `${count(body.canary.answered)} answered here`;
      facts.push(["Canary", `${body.canary.version} at ${percentText(body.canary.percent)}`, answered]);
    }
    $("models-summary").replaceChildren(...facts.map(([term, value, detail]) => fact(term, value, detail)));
  }

  // This worker's counts: another worker behind the same address keeps its own.
  function shadowDetail(shadow) {
    const agreement = typeof shadow.agreement === "number" ? `agrees on ${(shadow.agreement * 100).toFixed(1)}%` : "no agreement yet";
    const latency = typeof shadow.latency_ms === "number" ? ` · ${shadow.latency_ms.toFixed(2)} ms` : "";
    return `${agreement} of ${count(shadow.compared)} compared · ${count(shadow.skipped)} skipped${latency}`;
  }

  function count(value) {
    return typeof value === "number" ? value.toLocaleString("en-US") : "?";
  }

  function percentText(percent) {
    return `${Number(percent).toLocaleString("en-US", { maximumFractionDigits: 2 })}%`;
  }

  function versionRow(version, body) {
    const row = document.createElement("tr");
    row.dataset.version = version.version;
    if (version.state === "serving") {
      row.className = "serving";
      row.setAttribute("aria-current", "true");
    }
    const name = document.createElement("th");
    name.scope = "row";
    const code = document.createElement("code");
    code.textContent = version.version;
    code.title = `sha256 ${version.id}`;
    name.append(code);
    const badge = document.createElement("span");
    badge.className = "state";
    badge.dataset.state = version.state;
    badge.textContent = stateText(version, body);
    const created = document.createElement("time");
    if (version.created) {
      created.dateTime = version.created;
      created.textContent = dateText(version.created);
    }
    const accuracy = typeof version.accuracy === "number" ? `${(version.accuracy * 100).toFixed(2)}%` : "—";
    const reason = cell(version.reason || "", "reason", "Why refused");
    row.append(name, cell(badge), cell(accuracy, "num", "Accuracy"), cell(created, "", "Created"), reason);
    return row;
  }

  function stateText(version, body) {
    const traffic = body[version.state]; // the shadow or canary entry, when this version is one
    if ((version.state === "shadow" || version.state === "canary") && traffic && traffic.version === version.version) {
      return `${version.state}, ${percentText(traffic.percent)}`;
    }
    return version.state;
  }

  function dateText(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : `${date.toISOString().slice(0, 16).replace("T", " ")} UTC`;
  }

  // Every version but the serving one can be chosen; a refused one may be tried again (the server revalidates),
  // so it is listed, last.
  function showChoices(versions) {
    const select = $("change-version");
    const chosen = select.value;
    const refusedLast = (a, b) => (a.state === "refused") - (b.state === "refused");
    const options = versions
      .filter((version) => version.state !== "serving")
      .sort(refusedLast)
      .map((version) => {
        const option = document.createElement("option");
        option.value = version.version;
        option.textContent = `${version.version} (${version.state})`;
        return option;
      });
    select.replaceChildren(...options);
    if (options.some((option) => option.value === chosen)) select.value = chosen;
    select.disabled = options.length === 0;
  }

  // ---- changes -----------------------------------------------------------------------------------------

  function describeChangeError(response, body) {
    const detail = errorDetail(body) || response.statusText;
    switch (response.status) {
      case 401:
        return `Not changed: the admin key was not accepted (${detail}).`;
      case 403:
        return `Not changed: model changes are off on this server (${detail}).`;
      case 404:
        return `Not changed: ${detail}.`;
      case 409:
        return `Not changed: ${detail}.`;
      case 422:
        return `Not changed: the request was not accepted (${detail}).`;
      default:
        return `Not changed: ${describeError(response, body)}`;
    }
  }

  async function change(button, method, path, payload, success) {
    const message = $("change-message");
    if (!adminKey) {
      showMessage(message, "Enter the admin key first: changes need the server's FASHION_ADMIN_KEY.", "error");
      $("admin-key").focus();
      return;
    }
    if (busy) return;
    busy = true;
    button.setAttribute("aria-busy", "true");
    showMessage(message, "Changing…");
    const headers = { Authorization: `Bearer ${adminKey}` }; // replaces the API key: changes take the admin key
    if (payload) headers["Content-Type"] = "application/json";
    try {
      const init = { method, headers, body: payload ? JSON.stringify(payload) : undefined };
      const { response, body } = await callApi(path, init);
      if (response.ok) {
        showMessage(message, success(body || {}), "ok");
        checkReady(); // the header names the version that serves
      } else {
        showMessage(message, describeChangeError(response, body), "error");
      }
    } catch (error) {
      showMessage(message, `Could not reach the server: ${error.message}.`, "error");
    } finally {
      busy = false;
      button.removeAttribute("aria-busy");
    }
    await load(); // a refusal is recorded in the store too: show what is true now
  }

  function chosenVersion() {
    const version = $("change-version").value;
    if (!version) showMessage($("change-message"), "There is no other version to choose.", "error");
    return version;
  }

  function chosenPercent() {
    const percent = Number($("change-percent").value);
    if (!(percent > 0 && percent <= 100)) {
      showMessage($("change-message"), "The share must be more than 0 and at most 100 (%).", "error");
      $("change-percent").focus();
      return null;
    }
    return percent;
  }

  function versionPath(version, action) {
    return `/models/${encodeURIComponent(version)}/${action}`;
  }

  function activate(event) {
    const version = chosenVersion();
    if (!version) return;
    change(event.currentTarget, "POST", versionPath(version, "activate"), null, (body) =>
      `${body.serving || version} serves now${body.previous ? ` (was ${body.previous})` : ""}.`,
    );
  }

  function rollback(event) {
    change(event.currentTarget, "POST", "/models/rollback", null, (body) =>
      `Rolled back: ${body.serving} serves again${body.previous ? ` (was ${body.previous})` : ""}.`,
    );
  }

  function startTraffic(role) {
    return (event) => {
      const version = chosenVersion();
      const percent = version ? chosenPercent() : null;
      if (percent === null) return;
      const what = role === "shadow" ? "also runs on" : "answers";
      change(event.currentTarget, "PUT", versionPath(version, role), { percent }, () =>
        `${version} is the ${role} now: it ${what} ${percentText(percent)} of requests.`,
      );
    };
  }

  function stopTraffic(role) {
    return (event) => {
      const traffic = shown && shown[role];
      if (!traffic) return;
      change(event.currentTarget, "DELETE", versionPath(traffic.version, role), null, () =>
        `${traffic.version} is no longer the ${role}.`,
      );
    };
  }

  function setUp() {
    const key = $("admin-key");
    key.addEventListener("input", () => {
      adminKey = key.value.trim();
    });
    $("forget-admin-key").addEventListener("click", () => {
      adminKey = "";
      key.value = "";
      showMessage($("change-message"), "The admin key is forgotten.");
    });
    $("models-refresh").addEventListener("click", load);
    $("activate").addEventListener("click", activate);
    $("rollback").addEventListener("click", rollback);
    $("shadow-start").addEventListener("click", startTraffic("shadow"));
    $("canary-start").addEventListener("click", startTraffic("canary"));
    $("shadow-stop").addEventListener("click", stopTraffic("shadow"));
    $("canary-stop").addEventListener("click", stopTraffic("canary"));
  }

  return { load, setUp };
})();
