// ovearth explore: the page. Plain JavaScript, no libraries, nothing loaded from elsewhere.
// Every text that comes from the user or the server is set with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  result: null,      // the last run's JSON
  enabled: {},       // class label -> on/off (the legend's check boxes)
  thresholds: {},    // class label -> per-class threshold (text of the legend's inputs)
  running: false,
  again: false,      // a change arrived during a run: run once more at the end
  pixel: null,       // the pointer's pixel waiting for a readout
  reading: false,
};

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(url, options = {}) {
  const response = await fetch(url, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  if (chosen !== undefined && chosen !== null) select.value = chosen;
}

// ----- classes as typed: one per line, synonyms after commas -----
function pageClasses() {
  return $("classes").value.split("\n").map((line) => line.trim()).filter((line) => line.length > 0);
}
const labelOf = (line) => line.split(",")[0].trim().replace(/\s+/g, " ");

function settings() {
  const number = (id) => Number($(id).value);
  const out = {
    prob_thd: number("prob_thd"),
    confidence_threshold: number("confidence_threshold"),
    refine: $("refine").value.trim(),
    refine_at: $("refine_at").value,
    refine_for: $("refine_for").value,
    prompt_form: $("prompt_form").value,
    slide_crop: Math.trunc(number("slide_crop")),
    slide_stride: Math.trunc(number("slide_stride")),
    use_instances: $("use_instances").checked,
    use_semantic: $("use_semantic").checked,
    use_presence: $("use_presence").checked,
    bg_idx: $("bg_idx").value === "" ? null : Math.trunc(number("bg_idx")),
    class_prob_thd: {},
  };
  for (const line of pageClasses()) {
    const text = state.thresholds[labelOf(line)];
    if (text !== undefined && text !== "") out.class_prob_thd[labelOf(line)] = Number(text);
  }
  return out;
}

// ----- running -----
async function run() {
  if (state.running) { state.again = true; return; }
  const image = $("image").value;
  const classes = pageClasses();
  if (!image) { showError("Pick an image first."); return; }
  if (!classes.length) { showError("Type at least one class."); return; }
  state.running = true;
  $("run").disabled = true;
  $("status").textContent = "running…";
  try {
    const body = {
      image,
      classes,
      enabled: classes.map((line) => state.enabled[labelOf(line)] !== false),
      settings: settings(),
    };
    const result = await api("/api/run", {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    state.result = result;
    showError("");
    showResult(result);
  } catch (error) {
    showError(error.message);
    $("status").textContent = "";
  } finally {
    state.running = false;
    $("run").disabled = false;
    if (state.again) { state.again = false; run(); }
  }
}

let timer = null;
function runSoon() {  // after a short pause, so typing a threshold runs once
  if (!state.result) return;
  clearTimeout(timer);
  timer = setTimeout(run, 250);
}

function showResult(result) {
  const names = result.names.length;
  const ran = result.computed.length;
  $("status").textContent =
    `${names} name(s): ${ran} through the model, ${result.reused} reused · ${result.seconds.toFixed(2)} s`;
  const overlay = $("overlay");
  overlay.src = result.overlay;
  overlay.hidden = !$("show-overlay").checked;
  legend();
  nameTable(result);
  scoreMaps(result);
  fillSelect($("attention-class"), result.classes.map((c) => c.name));
  $("export-preset").href = result.preset;
  $("export-zip").href = result.export;
  $("exports").hidden = false;
  $("readout").textContent = "Point at the image to read the class scores.";
}

function legend() {
  const body = $("legend").tBodies[0];
  const byName = {};
  for (const c of (state.result ? state.result.classes : [])) byName[c.name] = c;
  const rows = pageClasses().map((line) => {
    const label = labelOf(line);
    const on = state.enabled[label] !== false;
    const found = on ? byName[label] : undefined;
    const box = el("input", { type: "checkbox", checked: on, title: `switch ${label} on or off` });
    box.dataset.class = label;
    box.addEventListener("change", () => { state.enabled[label] = box.checked; legend(); runSoon(); });
    const threshold = el("input", {
      type: "number", min: 0, max: 1, step: 0.01, value: state.thresholds[label] || "", placeholder: "all",
    });
    threshold.dataset.class = label;
    threshold.addEventListener("input", () => { state.thresholds[label] = threshold.value; runSoon(); });
    const swatch = el("span", { class: "swatch", style: { background: found ? found.color : "transparent" } });
    return el("tr", { class: on ? "" : "off" }, [
      el("td", {}, [box]),
      el("td", {}, [swatch]),
      el("td", { text: line }),
      el("td", { class: "num", text: found ? found.presence.toFixed(3) : "–" }),
      el("td", { class: "num", text: found ? `${(100 * found.share).toFixed(1)} %` : "–" }),
      el("td", {}, [threshold]),
    ]);
  });
  if (state.result && state.result.unclassified_share > 0) {
    rows.push(el("tr", {}, [
      el("td"), el("td", {}, [el("span", { class: "swatch", style: { background: "#dcdcdc" } })]),
      el("td", { text: "unclassified" }), el("td"),
      el("td", { class: "num", text: `${(100 * state.result.unclassified_share).toFixed(1)} %` }), el("td"),
    ]));
  }
  body.replaceChildren(...rows);
}

function nameTable(result) {
  const rows = result.names.map((n) => el("tr", {}, [
    el("td", { text: n.name }),
    el("td", { text: n.class }),
    el("td", { class: "num" }, [
      el("span", { class: "bar", style: { width: `${Math.round(60 * n.presence)}px` } }),
      n.presence.toFixed(3),
    ]),
  ]));
  $("names").tBodies[0].replaceChildren(...rows);
}

function scoreMaps(result) {
  const figures = result.classes.map((c) => {
    const image = el("img", { src: c.scores, alt: `scores of ${c.name}` });
    image.addEventListener("mousemove", pointer);
    return el("figure", {}, [image, el("figcaption", {}, [
      el("span", { class: "swatch", style: { background: c.color } }), ` ${c.name}`,
    ])]);
  });
  $("scores").replaceChildren(...figures);
}

// ----- the score readout under the pointer -----
function pointer(event) {
  if (!state.result) return;
  const box = event.target.getBoundingClientRect();
  const { width, height } = state.result.image;
  const x = Math.min(width - 1, Math.max(0, Math.floor(((event.clientX - box.left) / box.width) * width)));
  const y = Math.min(height - 1, Math.max(0, Math.floor(((event.clientY - box.top) / box.height) * height)));
  state.pixel = { x, y, id: state.result.id };
  readout();
}

async function readout() {
  if (state.reading || !state.pixel) return;
  const { x, y, id } = state.pixel;
  state.pixel = null;
  state.reading = true;
  try {
    const data = await api(`/api/results/${encodeURIComponent(id)}/pixel?x=${x}&y=${y}`);
    const parts = [`(${data.x}, ${data.y}) `, el("b", { text: data.label }), " — "];
    data.scores.forEach((s, i) => {
      if (i) parts.push(" · ");
      parts.push(el("span", { class: "score", text: `${s.class} ${s.score.toFixed(3)}` }));
    });
    $("readout").replaceChildren(...parts);
  } catch (error) {
    $("readout").textContent = error.message;
  } finally {
    state.reading = false;
    if (state.pixel) readout();
  }
}

// ----- attention -----
async function attention() {
  if (!state.result) return;
  const k = $("attention-class").selectedIndex;
  $("attention-info").textContent = "running the decoder…";
  $("attention-run").disabled = true;
  try {
    const data = await api(`/api/results/${encodeURIComponent(state.result.id)}/attention/${k}`);
    $("attention-info").textContent =
      `'${data.prompt}': presence ${data.presence.toFixed(3)}, ${data.kept} queries kept; ` +
      `${data.grid[0]} x ${data.grid[1]} tokens`;
    const titles = { queries: "mean of all queries", scored: "score-weighted kept queries", presence: "presence token" };
    $("attention").replaceChildren(...Object.entries(data.maps).map(([kind, url]) =>
      el("figure", {}, [el("img", { src: url, alt: `attention: ${kind}` }), el("figcaption", { text: titles[kind] || kind })])));
    showError("");
  } catch (error) {
    showError(error.message);
    $("attention-info").textContent = "";
  } finally {
    $("attention-run").disabled = false;
  }
}

// ----- images, uploads, presets -----
async function loadImages(select) {
  const data = await api("/api/images");
  const options = data.images.map((i) => el("option", { value: i.id, text: `${i.name}  (${i.source})` }));
  $("image").replaceChildren(el("option", { value: "", text: "pick an image…" }), ...options);
  if (select) $("image").value = select;
  else if (data.images.length) $("image").value = data.images[0].id;
  imageChanged();
}

function imageChanged() {
  const id = $("image").value;
  state.result = null;
  $("overlay").hidden = true;
  $("exports").hidden = true;
  $("picture").src = id ? `/api/image.png?id=${encodeURIComponent(id)}` : "";
  $("image-info").textContent = id ? $("image").selectedOptions[0].textContent : "";
  legend();
}

async function upload() {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > state.config.max_upload_bytes) {
    showError(`${file.name} is ${file.size} bytes; the limit is ${state.config.max_upload_bytes}.`);
    return;
  }
  try {
    // raw bytes, typed so that only this page (never a foreign one, without a CORS preflight) can send them
    const data = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, {
      method: "POST", headers: { "content-type": "application/octet-stream" }, body: file,
    });
    showError("");
    await loadImages(data.id);
  } catch (error) {
    showError(error.message);
  }
}

async function preset() {
  const name = $("preset").value;
  if (!name) return;
  try {
    const data = await api(`/api/presets/${encodeURIComponent(name)}`);
    $("classes").value = data.classes.map((c) => c.split(",").join(", ")).join("\n");
    applySettings(data.settings);
    state.enabled = {};
    state.thresholds = {};
    for (const [label, value] of Object.entries(data.settings.class_prob_thd || {})) state.thresholds[label] = String(value);
    legend();
    showError("");
  } catch (error) {
    showError(error.message);
  }
}

function applySettings(values) {
  for (const [key, value] of Object.entries(values)) {
    const input = $(key);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = Boolean(value);
    else input.value = value === null ? "" : value;
  }
}

async function start() {
  try {
    state.config = await api("/api/config");
    $("model").textContent = `${state.config.model} on ${state.config.device}`;
    fillSelect($("refine_at"), state.config.refine_at);
    fillSelect($("refine_for"), state.config.refine_for);
    fillSelect($("prompt_form"), state.config.prompt_forms);
    applySettings(state.config.defaults);
    $("refiners").replaceChildren(...state.config.refiners.map((r) => el("option", {
      value: `${r.name}:${Object.entries(r.params).map(([k, v]) => `${k}=${v}`).join(",")}`,
    })));
    $("preset").append(...state.config.presets.map((p) => el("option", { value: p, text: p })));
    await loadImages();
  } catch (error) {
    showError(error.message);
  }
  $("run").addEventListener("click", run);
  $("image").addEventListener("change", imageChanged);
  $("upload").addEventListener("change", upload);
  $("preset").addEventListener("change", preset);
  $("classes").addEventListener("input", legend);
  $("classes").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  for (const id of ["prob_thd", "bg_idx"]) $(id).addEventListener("input", runSoon);
  $("stage").addEventListener("mousemove", pointer);
  $("show-overlay").addEventListener("change", () => { $("overlay").hidden = !state.result || !$("show-overlay").checked; });
  $("attention-run").addEventListener("click", attention);
}

start();
