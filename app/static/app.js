// The try-the-model page: pick, drop, paste or draw an image, POST it to /predict, show what came back.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

const KEY_STORAGE = "fashion-serve.api-key";
const BRUSH_WIDTH = 18; // on the 280x280 canvas: about two pixels of the 28x28 input, like a garment's edge
const $ = (id) => document.getElementById(id);

const state = { source: null, busy: false, paramsLoaded: false };

// ---- talking to the API -------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function callApi(path, init = {}) {
  const response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers || {}) } });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // not JSON: describeError falls back to the status line
  }
  return { response, body };
}

function errorDetail(body) {
  return body && body.error && body.error.message ? body.error.message : "";
}

// A term and its value (and a smaller detail under it) for a <dl>.
function fact(term, value, detail) {
  const group = document.createElement("div");
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  if (detail) {
    const small = document.createElement("span");
    small.className = "fact-detail";
    small.textContent = detail;
    dd.append(small);
  }
  group.append(dt, dd);
  return group;
}

// data-label names the column on a phone, where the header row is hidden and the cells stack.
function cell(content, className = "", label = "") {
  const td = document.createElement("td");
  td.append(content);
  td.className = className;
  if (label) td.dataset.label = label;
  return td;
}

function describeError(response, body) {
  const detail = errorDetail(body) || response.statusText;
  const retry = response.headers.get("Retry-After");
  switch (response.status) {
    case 400:
      return `Could not read that image: ${detail}.`;
    case 401:
      return `API key needed: ${detail}. Enter it under “API key” at the top.`;
    case 413:
      return `Too big: ${detail}.`;
    case 415:
      return `Not an image the model can read: ${detail}.`;
    case 503:
      return `The server is not ready: ${detail}.${retry ? ` Try again in ${retry} s.` : ""}`;
    default:
      return `The server answered ${response.status}: ${detail}.`;
  }
}

function showMessage(element, text, kind = "info") {
  element.textContent = text;
  element.dataset.kind = kind;
}

// ---- choosing the image -------------------------------------------------------------------------------

function setSource(source) {
  state.source = source;
  $("source").textContent = `Will predict: ${source.label}`;
  showMessage($("message"), "");
}

function useFile(file) {
  if (!file) return;
  const preview = $("file-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  if (file.type.startsWith("image/")) {
    preview.src = URL.createObjectURL(file);
    preview.alt = `Chosen image ${file.name}`;
    preview.hidden = false;
  } else {
    preview.hidden = true; // the server judges what it is; it answers 415 for non-images
  }
  setSource({ kind: "file", blob: file, name: file.name, label: `the file ${file.name}` });
}

function setUpFileInput() {
  const input = $("file");
  input.addEventListener("change", () => useFile(input.files[0]));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useFile(event.dataTransfer.files[0]);
  });
  // A drop that misses the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) useFile(file);
  });
}

function setUpCanvas() {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
  };
  clear();
  context.strokeStyle = "#fff";
  context.lineWidth = BRUSH_WIDTH;
  context.lineCap = "round";
  context.lineJoin = "round";
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect(); // the canvas is scaled by CSS on small screens
    return [
      ((event.clientX - box.left) * canvas.width) / box.width,
      ((event.clientY - box.top) * canvas.height) / box.height,
    ];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    const [x, y] = point(event);
    context.beginPath();
    context.moveTo(x, y);
    context.lineTo(x, y);
    context.stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const [x, y] = point(event);
    context.lineTo(x, y);
    context.stroke();
  });
  const finish = () => {
    if (!drawing) return;
    drawing = false;
    setSource({ kind: "drawing", canvas, name: "drawing.png", label: "your drawing" });
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("clear").addEventListener("click", () => {
    clear();
    if (state.source && state.source.kind === "drawing") {
      state.source = null;
      $("source").textContent = "Nothing chosen yet.";
    }
  });
}

async function loadSamples() {
  const list = $("samples");
  let samples;
  try {
    const response = await fetch("/static/samples/samples.json");
    samples = await response.json();
  } catch {
    list.textContent = "The samples could not be loaded.";
    return;
  }
  for (const sample of samples) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.setAttribute("aria-label", `Classify sample: ${sample.class_name} (test image ${sample.test_index})`);
    const image = document.createElement("img");
    image.src = `/static/samples/${sample.file}`;
    image.alt = "";
    image.width = 56;
    image.height = 56;
    const caption = document.createElement("span");
    caption.textContent = sample.class_name;
    button.append(image, caption);
    button.addEventListener("click", () => trySample(sample));
    item.append(button);
    list.append(item);
  }
}

async function trySample(sample) {
  const response = await fetch(`/static/samples/${sample.file}`);
  const blob = await response.blob();
  setSource({
    kind: "sample",
    blob,
    name: sample.file,
    truth: sample.class_name,
    label: `test image ${sample.test_index} (a ${sample.class_name})`,
  });
  await predict();
}

// ---- predicting and showing the result ----------------------------------------------------------------

function sourceBlob(source) {
  if (source.kind !== "drawing") return Promise.resolve(source.blob);
  return new Promise((resolve) => source.canvas.toBlob(resolve, "image/png"));
}

async function predict() {
  const message = $("message");
  if (!state.source) {
    showMessage(message, "Choose, drop or draw an image first, or click a sample.", "error");
    return;
  }
  if (state.busy) return;
  state.busy = true;
  $("predict").setAttribute("aria-busy", "true");
  showMessage(message, "Predicting…");
  const source = state.source;
  try {
    const form = new FormData();
    form.append("file", await sourceBlob(source), source.name);
    const started = performance.now();
    const { response, body } = await callApi("/predict?return_input=true&explain=true", { method: "POST", body: form });
    const roundTripMs = performance.now() - started;
    if (!response.ok || !body) {
      showMessage(message, describeError(response, body), "error");
      if (response.status === 401) openKeyPanel();
      return;
    }
    showResult(body, source, roundTripMs);
    // On a phone the result sits below the controls: bring it into view (no jump when already visible).
    $("result-heading").scrollIntoView({ block: "nearest", behavior: "smooth" });
    const percent = formatPercent(body.probabilities[body.class_name]);
    showMessage(message, `Predicted ${body.class_name} (${percent}).`, "ok");
  } catch (error) {
    showMessage(message, `Could not reach the server: ${error.message}. Is it running?`, "error");
  } finally {
    state.busy = false;
    $("predict").removeAttribute("aria-busy");
  }
}

function formatPercent(probability) {
  const percent = probability * 100;
  return percent >= 0.05 || percent === 0 ? `${percent.toFixed(1)}%` : "<0.1%";
}

function showResult(body, source, roundTripMs) {
  $("result-empty").hidden = true;
  $("result").hidden = false;
  $("seen").src = body.input_image;
  $("class-name").textContent = body.class_name;
  $("confidence").textContent = `${formatPercent(body.probabilities[body.class_name])} sure`;
  const truth = $("truth");
  truth.hidden = !source.truth;
  if (source.truth) {
    const right = source.truth === body.class_name;
    truth.textContent = `${right ? "Right" : "Wrong"}: the test set says ${source.truth}.`;
    truth.dataset.kind = right ? "ok" : "error";
  }
  $("latency").textContent =
    `Round trip ${roundTripMs.toFixed(1)} ms · in the model ${body.inference_ms.toFixed(2)} ms · model ${body.model_version}`;
  $("inverted").hidden = !body.inverted;
  // The model's own doubt, when its artifact has a detector (null otherwise: no warning either way).
  $("not-garment").hidden = body.in_distribution !== false;
  const heatmap = $("heatmap");
  heatmap.hidden = !body.explanation || !$("show-explanation").checked;
  if (body.explanation) heatmap.src = body.explanation.heatmap;
  $("show-explanation").closest("label").hidden = !body.explanation;
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, probability] of Object.entries(body.probabilities)) {
    const winner = name === body.class_name;
    const item = document.createElement("li");
    item.className = winner ? "bar winner" : "bar";
    const label = document.createElement("span");
    label.className = "bar-name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(probability * 100, 0.5)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = formatPercent(probability);
    item.append(label, track, value);
    if (winner) {
      const note = document.createElement("span");
      note.className = "visually-hidden";
      note.textContent = " (the prediction)";
      item.append(note);
    }
    bars.append(item);
  }
}

// ---- the layers view ----------------------------------------------------------------------------------

function formatStat(value) {
  return Math.abs(value) >= 1e-3 || value === 0 ? value.toFixed(4) : value.toExponential(2);
}

function formatBytes(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

async function loadLayers() {
  const message = $("layers-message");
  showMessage(message, "Loading the parameters…");
  try {
    const [params, info] = await Promise.all([callApi("/model/params"), callApi("/model")]);
    if (!params.response.ok || !params.body) {
      showMessage(message, describeError(params.response, params.body), "error");
      if (params.response.status === 401) openKeyPanel();
      return;
    }
    showLayers(params.body, info.response.ok ? info.body : null);
    state.paramsLoaded = true;
    showMessage(message, "");
  } catch (error) {
    showMessage(message, `Could not reach the server: ${error.message}.`, "error");
  }
}

function showLayers(params, info) {
  const summary = $("model-summary");
  summary.replaceChildren();
  const facts = [
    ["Parameters", params.total_parameters.toLocaleString("en-US")],
    ["Trainable", params.trainable_parameters.toLocaleString("en-US")],
    ["Size in memory", formatBytes(params.total_bytes)],
  ];
  if (info) {
    facts.push(["Version", info.version], ["Device", info.device]);
    const accuracy = info.metadata && info.metadata.test_accuracy;
    if (typeof accuracy === "number") facts.push(["Test accuracy", formatPercent(accuracy)]);
  }
  summary.append(...facts.map(([term, value]) => fact(term, value)));
  const layers = describeModules(params.module_tree);
  const groups = new Map(); // module path -> its parameters, in the order the model lists them
  for (const p of params.parameters) {
    const path = p.name.split(".").slice(0, -1).join(".");
    if (!groups.has(path)) groups.set(path, []);
    groups.get(path).push(p);
  }
  const bodies = [...groups].map(([path, members]) => {
    const body = document.createElement("tbody");
    const header = document.createElement("tr");
    header.className = "layer";
    const heading = document.createElement("th");
    heading.scope = "rowgroup";
    heading.colSpan = 8;
    const code = document.createElement("code");
    code.textContent = path || "(top level)";
    heading.append(code, ` ${layers.get(path) || ""}`);
    header.append(heading);
    body.append(header, ...members.map(parameterRow));
    return body;
  });
  $("params").querySelectorAll("tbody").forEach((body) => body.remove());
  $("params").append(...bodies);
  $("module-tree").textContent = params.module_tree;
}

// "(0): Linear(in_features=784, ...)" lines of the printed model, keyed by module path ("linear_relu_stack.0").
function describeModules(tree) {
  const layers = new Map();
  const stack = [];
  for (const line of tree.split("\n")) {
    const match = /^( *)\(([^)]+)\): (.*)$/.exec(line);
    if (!match) continue;
    const depth = match[1].length / 2 - 1; // PyTorch indents children by two spaces
    stack.length = depth;
    stack.push(match[2]);
    layers.set(stack.join("."), match[3].replace(/\($/, ""));
  }
  return layers;
}

function parameterRow(p) {
  const row = document.createElement("tr");
  const name = document.createElement("th");
  name.scope = "row";
  name.textContent = p.name;
  const cells = [
    [p.shape.join(" × "), ""],
    [p.dtype, ""],
    [p.numel.toLocaleString("en-US"), "num"],
    [formatStat(p.mean), "num"],
    [formatStat(p.std), "num"],
    [formatStat(p.min), "num"],
    [formatStat(p.max), "num"],
  ].map(([text, className]) => cell(text, className));
  row.append(name, ...cells);
  return row;
}

// ---- page chrome: views, readiness, API key -----------------------------------------------------------

const VIEWS = ["try", "layers", "models"]; // each has #view-NAME, #nav-NAME and #NAME-heading; #NAME shows it

function showView(focus) {
  const shown = VIEWS.find((name) => location.hash === `#${name}`) || "try";
  for (const name of VIEWS) {
    $(`view-${name}`).hidden = name !== shown;
    if (name === shown) $(`nav-${name}`).setAttribute("aria-current", "page");
    else $(`nav-${name}`).removeAttribute("aria-current");
  }
  if (shown === "layers" && !state.paramsLoaded) loadLayers();
  if (shown === "models") modelsView.load(); // versions change from elsewhere: read them afresh each time
  if (focus) $(`${shown}-heading`).focus();
}

async function checkReady() {
  const status = $("server-status");
  try {
    const { response, body } = await callApi("/readyz");
    if (response.ok && body) {
      showMessage(status, `Model ready · ${body.model_version} on ${body.device}`, "ok");
      return;
    }
    showMessage(status, `Not ready: ${errorDetail(body) || response.statusText}`, "error");
  } catch {
    showMessage(status, "The server cannot be reached.", "error");
  }
  setTimeout(checkReady, 5000); // a model that is still loading will be ready soon
}

function openKeyPanel() {
  $("key-panel").open = true;
  $("api-key").focus();
}

function setUpExplanationToggle() {
  $("show-explanation").addEventListener("change", (event) => {
    $("heatmap").hidden = !event.target.checked || !$("heatmap").getAttribute("src");
  });
}

function setUpKey() {
  const input = $("api-key");
  input.value = sessionStorage.getItem(KEY_STORAGE) || "";
  input.addEventListener("input", () => {
    if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value);
    else sessionStorage.removeItem(KEY_STORAGE);
    state.paramsLoaded = false; // a view that failed for want of a key may load now
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpKey();
  setUpExplanationToggle();
  setUpFileInput();
  setUpCanvas();
  $("predict").addEventListener("click", predict);
  modelsView.setUp();
  window.addEventListener("hashchange", () => showView(true));
  showView(false);
  loadSamples();
  checkReady();
});
