// recce serve page: upload files (one job each), follow their progress, show verdict, score timeline and face
// panels. Only this server is contacted; user-provided text is always inserted as text, never as HTML.
"use strict";

const state = { info: null };
const $ = (selector, root = document) => root.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";

async function loadModels() {
  try {
    const response = await fetch("/api/models");
    state.info = await response.json();
  } catch (error) {
    showServerError(`The server does not answer (${error}). Is recce serve still running?`);
    return;
  }
  const select = $("#model");
  for (const model of state.info.models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.detector}, ${model.input_size}px)`;
    select.append(option);
  }
  select.value = state.info.default;
  $("#settings").textContent =
    `threshold ${state.info.threshold} · face detector ${state.info.face_detector} · ` +
    `${state.info.frames} frames sampled per video`;
  $("#limits").textContent =
    `Up to ${state.info.max_upload_mb} MB per file · ${state.info.extensions.join(" ")}`;
}

function showServerError(text) {
  const element = $("#server-error");
  element.textContent = text;
  element.hidden = false;
}

function extensionOf(name) {
  const dot = name.lastIndexOf(".");
  return dot < 0 ? "" : name.slice(dot).toLowerCase();
}

function newCard(file) {
  const card = $("#job-template").content.firstElementChild.cloneNode(true);
  $(".name", card).textContent = file.name;
  $("#jobs").prepend(card);
  return card;
}

function setProgress(card, stage, done, total) {
  const bar = $("progress", card);
  bar.max = Math.max(total, 1);
  bar.value = done;
  $(".stage", card).textContent = total ? `${stage}: ${done} / ${total}` : stage;
}

function showMessage(card, text, warning = false) {
  const element = $(".message", card);
  element.textContent = text;
  element.classList.toggle("warning", warning);
  element.hidden = false;
}

function finishWithError(card, text) {
  $(".progress", card).hidden = true;
  showMessage(card, text);
}

function submit(file) {
  const card = newCard(file);
  const info = state.info;
  if (info && !info.extensions.includes(extensionOf(file.name))) {
    finishWithError(card, `${file.name}: not an image or video (accepted: ${info.extensions.join(" ")}).`);
    return;
  }
  if (info && file.size > info.max_upload_mb * 1024 * 1024) {
    const size = (file.size / 1048576).toFixed(0);
    finishWithError(card, `${file.name}: ${size} MB is over the ${info.max_upload_mb} MB upload limit.`);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/api/jobs?model=${encodeURIComponent($("#model").value)}`);
  xhr.upload.onprogress = (event) => {
    if (event.lengthComputable) {
      const mb = (n) => (n / 1048576).toFixed(1);
      setProgress(card, `uploading (${mb(event.loaded)} of ${mb(event.total)} MB)`, event.loaded, event.total);
    }
  };
  xhr.onload = () => {
    let body = {};
    try {
      body = JSON.parse(xhr.responseText);
    } catch (error) {
      body = { detail: xhr.responseText };
    }
    if (xhr.status === 202) {
      card.dataset.job = body.id;
      setProgress(card, "queued", 0, 0);
      poll(card, body.id);
    } else {
      finishWithError(card, body.detail || `upload refused (HTTP ${xhr.status})`);
    }
  };
  xhr.onerror = () => finishWithError(card, `${file.name}: the upload failed (server unreachable or stopped).`);
  setProgress(card, "uploading", 0, file.size);
  xhr.send(form);
}

async function poll(card, id) {
  let job;
  try {
    job = await (await fetch(`/api/jobs/${id}`)).json();
  } catch (error) {
    setTimeout(() => poll(card, id), 1500);
    return;
  }
  if (job.status === "done") {
    showResult(card, job);
  } else if (job.status === "failed" || job.detail) {
    finishWithError(card, job.message || job.detail);
  } else {
    setProgress(card, job.stage || job.status, job.progress.done, job.progress.total);
    setTimeout(() => poll(card, id), 400);
  }
}

function showResult(card, job) {
  const result = job.result;
  $(".progress", card).hidden = true;
  const verdict = $(".verdict", card);
  verdict.textContent = result.verdict;
  verdict.className = `verdict ${result.verdict.replace(" ", "-")}`;
  verdict.hidden = false;
  card.dataset.verdict = result.verdict;
  if (result.error) {
    showMessage(card, result.error);
    return;
  }
  if (result.warning) {
    showMessage(card, `${result.warning} — scored on the ${result.frames} frame(s) read.`, true);
  }
  $(".result", card).hidden = false;
  const model = job.model;
  $(".provenance", card).textContent =
    `detector ${model.detector} · checkpoint ${model.checkpoint} (${model.input_size}px) · ` +
    `face detector ${job.face_detector}`;
  if (result.score === null) {
    $(".summary", card).textContent =
      `No face found in the ${result.frames} frame(s) examined, so there is nothing to score.`;
  } else {
    const what = result.kind === "video" ? `mean of ${result.frames_with_face} frame score(s)` : "one image";
    $(".summary", card).textContent =
      `P(fake) = ${result.score.toFixed(3)} (${what}; FAKE at ≥ ${job.threshold}) · ` +
      `${result.faces.length} face(s) in ${result.frames_with_face} of ${result.frames} frame(s)`;
  }
  if (result.kind === "video" && job.timeline.sampled.length) {
    $(".timeline", card).append(timeline(result, job.timeline, job.threshold));
  }
  for (const panel of job.panels) {
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.className = "panel";
    image.src = panel.url;
    image.alt = `face ${panel.face}, frame ${panel.frame}`;
    const caption = document.createElement("figcaption");
    const face = result.faces[panel.face];
    caption.textContent =
      `face ${panel.face} · frame ${panel.frame}${timeOf(panel.frame, job.timeline.fps)} · ` +
      `P(fake) ${panel.score.toFixed(3)} · box ${face.box.map((v) => v.toFixed(0)).join(", ")}`;
    figure.append(image, caption);
    $(".panels", card).append(figure);
  }
  $("a.json", card).href = job.downloads.json;
  $("a.csv", card).href = job.downloads.csv;
}

function timeOf(frame, fps) {
  return fps > 0 ? ` (${(frame / fps).toFixed(2)} s)` : "";
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// Per-frame score (highest face) against time, the threshold, and the sampled frames where no face was found.
function timeline(result, line, threshold) {
  const width = 760, height = 226, left = 54, right = 16, top = 14, bottom = 56;
  const x = line.fps > 0 ? (frame) => frame / line.fps : (frame) => frame;
  const last = Math.max(x(line.sampled[line.sampled.length - 1]), 1e-9);
  const px = (frame) => left + (x(frame) / last) * (width - left - right);
  const py = (score) => top + (1 - score) * (height - top - bottom);
  const svg = svgElement("svg", { viewBox: `0 0 ${width} ${height}`, class: "timeline", role: "img" });
  svg.append(svgElement("title", {}, "P(fake) of each sampled frame over time"));
  svg.append(svgElement("line", { class: "axis", x1: left, y1: py(0), x2: width - right, y2: py(0) }));
  svg.append(svgElement("line", { class: "axis", x1: left, y1: py(0), x2: left, y2: py(1) }));
  for (const tick of [0, 0.5, 1]) {
    svg.append(svgElement("text", { x: left - 6, y: py(tick) + 4, "text-anchor": "end" }, tick.toFixed(1)));
  }
  for (let i = 0; i <= 4; i += 1) {
    const value = (last * i) / 4;
    const at = left + (i / 4) * (width - left - right);
    const label = line.fps > 0 ? `${value.toFixed(1)} s` : `frame ${value.toFixed(0)}`;
    svg.append(svgElement("text", { x: at, y: py(0) + 28, "text-anchor": "middle" }, label));
  }
  const middle = py(0.5);
  svg.append(svgElement("text", { x: 14, y: middle, transform: `rotate(-90 14 ${middle})`, "text-anchor": "middle" }, "P(fake)"));
  svg.append(svgElement("line", { class: "threshold", x1: left, y1: py(threshold), x2: width - right, y2: py(threshold) }));
  const points = Object.entries(result.frame_scores).map(([frame, score]) => [Number(frame), score]);
  points.sort((a, b) => a[0] - b[0]);
  svg.append(svgElement("polyline", { class: "score", points: points.map(([f, s]) => `${px(f)},${py(s)}`).join(" ") }));
  for (const [frame, score] of points) {
    const dot = svgElement("circle", { class: score >= threshold ? "dot fake" : "dot", cx: px(frame), cy: py(score), r: 3.5 });
    dot.append(svgElement("title", {}, `frame ${frame}${timeOf(frame, line.fps)}: P(fake) ${score.toFixed(3)}`));
    svg.append(dot);
  }
  for (const frame of line.no_face) {
    const cx = px(frame), cy = py(0);
    const mark = svgElement("path", { class: "noface", d: `M${cx - 5},${cy + 12} L${cx + 5},${cy + 12} L${cx},${cy + 3} Z` });
    mark.append(svgElement("title", {}, `frame ${frame}${timeOf(frame, line.fps)}: no face found`));
    svg.append(mark);
  }
  const legend = `● frame score   ▲ no face   - - threshold ${threshold}`;
  svg.append(svgElement("text", { x: width - right, y: height - 4, "text-anchor": "end" }, legend));
  return svg;
}

function setUpDrop() {
  const drop = $("#drop");
  const input = $("#files");
  input.addEventListener("change", () => {
    for (const file of input.files) submit(file);
    input.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    for (const file of event.dataTransfer.files) submit(file);
  });
}

setUpDrop();
loadModels();
