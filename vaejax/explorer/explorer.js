// vaejax explorer: the page of `python -m vaejax.explore`. It talks to its own server's JSON API only.
"use strict";

const SIDE = 28; // images are 28x28 grey levels, row-major
const PLANE_SIZE = 480; // CSS pixels of the plane, square
const SNAP_PX = 6; // a click this close to a test point picks that test digit
const CLICK_PX = 4; // a pointer that moved less than this between down and up clicked
const PAD_INK = 20; // MNIST digits fit a 20x20 box centred in 28x28; drawings are fitted the same way
const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"]; // matplotlib's palette, as the figures colour the classes

const $ = id => document.getElementById(id);

// What tests and benchmarks/explore_latency.py read: pointer-to-paint latencies in ms (from a pointer
// move's timestamp to the frame after its image, or a later one's, is painted) and the count of pointer
// moves, the z last asked for and the z whose image is painted, the drawn digit's code, and the plane's
// view (see planeAt).
const explorer = window.explorer = {
  ready: false, latencies: [], moves: 0, z: null, shownZ: null, shownLabel: null, code: null, view: null,
};

const state = {
  info: null, plane: null, z: null, label: 0, grid: "off", ends: [null, null], nextEnd: 0,
  code: null, sampleSeed: null,
};

async function api(path, body) {
  const options = body === undefined ? {} :
    {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const answer = await response.json();
  if (!response.ok) throw new Error(`${path}: ${answer.error || response.statusText}`);
  return answer;
}

function showError(error) {
  $("status").textContent = String(error.message || error);
}

// Keeps at most one request in flight: inputs that arrive meanwhile replace each other, and the latest
// is sent when the answer is in. The page never queues a request per pointer event.
function latestOnly(send) {
  let busy = false;
  let waiting = null; // [the latest input] while a request is in flight, else null
  async function run(input) {
    busy = true;
    try {
      await send(input);
    } catch (error) {
      showError(error);
    }
    busy = false;
    if (waiting !== null) {
      const [next] = waiting;
      waiting = null;
      run(next);
    }
  }
  return input => {
    if (busy) waiting = [input];
    else run(input);
  };
}

function labelled(body) {
  return state.info.conditional ? {...body, label: state.label} : body;
}

function paintDigit(canvas, pixels) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  for (let i = 0; i < pixels.length; i++) {
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = pixels[i];
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

function digitCanvas(pixels, title) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SIDE;
  canvas.className = "digit";
  canvas.title = title;
  paintDigit(canvas, pixels);
  return canvas;
}

function layer(id) {
  const canvas = $(id);
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.height = Math.round(PLANE_SIZE * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  return context;
}

// The plane: z = center + x * directions[0] + y * directions[1]; the canvas spans `extent` in (x, y),
// x growing rightwards, y upwards. A pixel (px, py) from the top-left corner is
// x = x0 + px / size * (x1 - x0), y = y1 - py / size * (y1 - y0).
function planeAt(px, py) {
  const [x0, x1, y0, y1] = state.plane.extent;
  return [x0 + px / PLANE_SIZE * (x1 - x0), y1 - py / PLANE_SIZE * (y1 - y0)];
}

function pixelOf([x, y]) {
  const [x0, x1, y0, y1] = state.plane.extent;
  return [(x - x0) / (x1 - x0) * PLANE_SIZE, (y1 - y) / (y1 - y0) * PLANE_SIZE];
}

const dot = (a, b) => a.reduce((sum, value, k) => sum + value * b[k], 0);

function onPlane(z) {
  const {center, directions: [a, b]} = state.plane;
  const offset = z.map((value, k) => value - center[k]);
  return [dot(offset, a), dot(offset, b)];
}

// The point of the plane at (x, y) that keeps the current z's part across the plane (the other
// dimensions' sliders). With plain axes this sets two coordinates exactly.
function zAt(x, y) {
  const {directions: [a, b]} = state.plane;
  const [along, up] = onPlane(state.z);
  return state.z.map((value, k) => (value - along * a[k] - up * b[k]) + x * a[k] + y * b[k]);
}

// --- the pointer's image -------------------------------------------------------------------------

const pendingMoves = []; // [number, timeStamp] of pointer moves whose image is not painted yet

const requestDecode = latestOnly(async ({z, label, move}) => {
  const answer = await api("/api/decode", state.info.conditional ? {z, label} : {z});
  paintDigit($("decoded"), answer.pixels);
  explorer.shownZ = z;
  explorer.shownLabel = label;
  requestAnimationFrame(() => {
    const painted = performance.now();
    while (pendingMoves.length && pendingMoves[0][0] <= move) explorer.latencies.push(painted - pendingMoves.shift()[1]);
  });
});

function setZ(z) {
  state.z = z;
  explorer.z = z;
  requestDecode({z, label: state.label, move: explorer.moves});
  showCoordinates(z);
  drawMarks();
}

function showCoordinates(z) {
  $("coords").textContent = `z = (${z.map(value => value.toFixed(3)).join(", ")})`;
  if (state.info.variational) {
    // log N(z; 0, I) = -(d log 2pi + |z|^2) / 2
    const logDensity = -0.5 * (z.length * Math.log(2 * Math.PI) + dot(z, z));
    $("density").textContent = `prior density N(z; 0, I) = ${Math.exp(logDensity).toPrecision(3)} ` +
      `(log ${logDensity.toFixed(2)})`;
  }
  document.querySelectorAll("#sliders input").forEach((slider, k) => { slider.value = z[k]; });
}

function pointerPosition(event) {
  const box = event.currentTarget.getBoundingClientRect();
  return [event.clientX - box.left, event.clientY - box.top];
}

function onPlanePointer(event) {
  const [px, py] = pointerPosition(event);
  if (px < 0 || py < 0 || px > PLANE_SIZE || py > PLANE_SIZE) return;
  pendingMoves.push([++explorer.moves, event.timeStamp]);
  setZ(zAt(...planeAt(px, py)));
}

// --- the plane's layers --------------------------------------------------------------------------

function drawPoints() {
  const context = layer("points-layer");
  context.clearRect(0, 0, PLANE_SIZE, PLANE_SIZE);
  const labels = state.info.labels;
  context.globalAlpha = 0.6;
  for (let label = 0; label < state.info.class_names.length; label++) {
    context.fillStyle = TAB10[label % TAB10.length];
    state.plane.coords.forEach((point, i) => {
      if (labels[i] !== label) return;
      const [px, py] = pixelOf(point);
      context.fillRect(px - 1, py - 1, 2, 2);
    });
  }
  context.globalAlpha = 1;
  drawAxes(context);
}

function drawAxes(context) {
  const [x0, x1, y0, y1] = state.plane.extent;
  context.fillStyle = "#333";
  context.strokeStyle = "#fff"; // a halo keeps the labels readable over the grid
  context.lineWidth = 3;
  context.font = "11px system-ui, sans-serif";
  const label = (text, px, py) => {
    context.strokeText(text, px, py);
    context.fillText(text, px, py);
  };
  const tickStep = span => Math.pow(10, Math.floor(Math.log10(span / 2)));
  const [xStep, yStep] = [tickStep(x1 - x0), tickStep(y1 - y0)];
  for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1; x += xStep) {
    const [px] = pixelOf([x, y0]);
    context.fillRect(px, PLANE_SIZE - 5, 1, 5);
    label(+x.toFixed(3), px + 2, PLANE_SIZE - 7);
  }
  if (state.info.latent_dim === 1) return; // the plane's y axis is no part of z
  for (let y = Math.ceil(y0 / yStep) * yStep; y <= y1; y += yStep) {
    const [, py] = pixelOf([x0, y]);
    context.fillRect(0, py, 5, 1);
    label(+y.toFixed(3), 7, py - 2);
  }
}

// Cell edges halfway between grid values, so a grid that is not evenly spaced (the inverse CDF's)
// still tiles the plane.
function cellEdges(values) {
  const last = values.length - 1;
  return [values[0] - (values[1] - values[0]) / 2, ...values.slice(1).map((value, k) => (values[k] + value) / 2),
    values[last] + (values[last] - values[last - 1]) / 2];
}

const requestGrid = latestOnly(async kind => {
  const context = layer("grid-layer");
  if (kind === "off") {
    context.clearRect(0, 0, PLANE_SIZE, PLANE_SIZE);
    return;
  }
  const {xs, ys} = state.plane.grids[kind];
  const points = ys.flatMap(y => xs.map(x => zAt(x, y)));
  const answer = await api("/api/decode", labelled({z: points}));
  context.clearRect(0, 0, PLANE_SIZE, PLANE_SIZE);
  context.imageSmoothingEnabled = false;
  const [xEdges, yEdges] = [cellEdges(xs), cellEdges(ys)];
  const tile = document.createElement("canvas");
  tile.width = tile.height = SIDE;
  answer.pixels.forEach((pixels, i) => {
    const [column, row] = [i % xs.length, Math.floor(i / xs.length)];
    const [left, top] = pixelOf([xEdges[column], yEdges[row + 1]]);
    const [right, bottom] = pixelOf([xEdges[column + 1], yEdges[row]]);
    paintDigit(tile, pixels);
    context.drawImage(tile, left, top, right - left, bottom - top);
  });
});

function drawMarks() {
  const context = layer("marks-layer");
  context.clearRect(0, 0, PLANE_SIZE, PLANE_SIZE);
  if (state.code) drawCode(context, state.code);
  state.ends.forEach((end, k) => {
    if (end === null) return;
    const [px, py] = pixelOf(onPlane(end.z));
    context.fillStyle = "#000";
    context.font = "bold 14px system-ui, sans-serif";
    context.fillText("AB"[k], px + 5, py - 5);
    context.fillRect(px - 2, py - 2, 4, 4);
  });
  const [px, py] = pixelOf(onPlane(state.z));
  context.lineWidth = 2;
  context.strokeStyle = "#000";
  context.beginPath();
  context.arc(px, py, 6, 0, 2 * Math.PI);
  context.stroke();
  context.strokeStyle = "#fff";
  context.lineWidth = 1;
  context.beginPath();
  context.arc(px, py, 7.5, 0, 2 * Math.PI);
  context.stroke();
}

// The drawn digit's code: its mean, and for a VAE the encoder's one-standard-deviation ellipse as it
// falls on the plane (the 2x2 covariance of the projected diagonal Gaussian).
function drawCode(context, {mean, std}) {
  const [px, py] = pixelOf(onPlane(mean));
  context.strokeStyle = context.fillStyle = "#d00";
  context.lineWidth = 2;
  if (std) {
    const [a, b] = state.plane.directions;
    const variance = std.map(s => s * s);
    const p = variance.reduce((sum, v, k) => sum + v * a[k] * a[k], 0);
    const q = variance.reduce((sum, v, k) => sum + v * a[k] * b[k], 0);
    const r = variance.reduce((sum, v, k) => sum + v * b[k] * b[k], 0);
    const spread = Math.sqrt(((p - r) / 2) ** 2 + q * q);
    const [x0, x1, y0, y1] = state.plane.extent;
    context.save();
    context.translate(px, py);
    context.scale(PLANE_SIZE / (x1 - x0), -PLANE_SIZE / (y1 - y0));
    context.rotate(0.5 * Math.atan2(2 * q, p - r));
    context.beginPath();
    context.ellipse(0, 0, Math.sqrt((p + r) / 2 + spread), Math.sqrt(Math.max((p + r) / 2 - spread, 0)), 0, 0,
      2 * Math.PI);
    context.restore();
    context.stroke();
  }
  context.beginPath();
  context.moveTo(px - 6, py - 6);
  context.lineTo(px + 6, py + 6);
  context.moveTo(px + 6, py - 6);
  context.lineTo(px - 6, py + 6);
  context.stroke();
}

async function loadPlane(axes) {
  state.plane = await api(`/api/plane?axes=${axes}`);
  explorer.view = {extent: state.plane.extent, size: PLANE_SIZE, center: state.plane.center,
    directions: state.plane.directions};
  $("plane-title").textContent = `Latent means of the test set: ${state.plane.title}`;
  drawPoints();
  if (state.z === null) {
    const [x0, x1, y0, y1] = state.plane.extent;
    state.z = state.plane.center.slice();
    state.z = zAt((x0 + x1) / 2, (y0 + y1) / 2);
  }
  setZ(state.z);
  requestGrid(state.grid);
}

// --- interpolation -------------------------------------------------------------------------------

function nearestTestDigit(px, py) {
  let best = null;
  let bestDistance = SNAP_PX;
  state.plane.coords.forEach((point, i) => {
    const [qx, qy] = pixelOf(point);
    const distance = Math.hypot(qx - px, qy - py);
    if (distance <= bestDistance) [best, bestDistance] = [i, distance];
  });
  return best;
}

const requestStrip = latestOnly(async () => {
  const [start, end] = state.ends.map(e => (e.index === undefined ? {z: e.z} : {index: e.index}));
  const answer = await api("/api/interpolate", labelled({start, end}));
  state.ends[0].z = answer.start;
  state.ends[1].z = answer.end;
  $("strip").replaceChildren(...answer.pixels.map((pixels, k) => digitCanvas(pixels, `step ${k + 1}`)));
  drawMarks();
});

function describeEnd(end) {
  if (end.index === undefined) return `z = (${end.z.map(value => value.toFixed(2)).join(", ")})`;
  const name = state.info.class_names[state.info.labels[end.index]];
  return `test digit #${end.index} (${name})`;
}

function setEnd(k, end) {
  state.ends[k] = end;
  $(`end-${k}`).textContent = describeEnd(end);
  drawMarks();
  if (state.ends.every(e => e !== null)) requestStrip();
}

function onPlaneClick(px, py) {
  const index = nearestTestDigit(px, py);
  const end = index === null ? {z: zAt(...planeAt(px, py))} : {index, z: zAt(...state.plane.coords[index])};
  setEnd(state.nextEnd, end);
  state.nextEnd = 1 - state.nextEnd;
}

// --- drawing and dropping ------------------------------------------------------------------------

const requestCode = latestOnly(async pixels => {
  const answer = await api("/api/encode", labelled({pixels}));
  paintDigit($("reconstruction"), answer.pixels);
  state.code = {mean: answer.mean, std: answer.std};
  explorer.code = state.code;
  const numbers = values => `(${values.map(value => value.toFixed(3)).join(", ")})`;
  $("code").textContent = `mean ${numbers(answer.mean)}` + (answer.std ? `, std ${numbers(answer.std)}` : "");
  drawMarks();
});

function greyLevels(canvas) {
  const rgba = canvas.getContext("2d").getImageData(0, 0, SIDE, SIDE).data;
  return Array.from({length: SIDE * SIDE}, (_, i) => Math.round(
    0.299 * rgba[4 * i] + 0.587 * rgba[4 * i + 1] + 0.114 * rgba[4 * i + 2]));
}

function encodeDrawn() {
  const pixels = greyLevels($("drawn"));
  paintDigit($("drawn"), pixels);
  requestCode(pixels);
}

// The drawing's ink, fitted into a 20x20 box centred in 28x28, as MNIST's digits were prepared.
function fitDrawing() {
  const pad = $("pad");
  const ink = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
  let [left, top, right, bottom] = [pad.width, pad.height, -1, -1];
  for (let y = 0; y < pad.height; y++) {
    for (let x = 0; x < pad.width; x++) {
      if (ink[4 * (y * pad.width + x)] > 0) {
        [left, right, top, bottom] = [Math.min(left, x), Math.max(right, x), Math.min(top, y), Math.max(bottom, y)];
      }
    }
  }
  if (right < 0) return false;
  const [width, height] = [right - left + 1, bottom - top + 1];
  const scale = PAD_INK / Math.max(width, height);
  const context = $("drawn").getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, SIDE, SIDE);
  context.imageSmoothingQuality = "high";
  context.drawImage(pad, left, top, width, height, (SIDE - width * scale) / 2, (SIDE - height * scale) / 2,
    width * scale, height * scale);
  return true;
}

function setUpPad() {
  const pad = $("pad");
  const context = pad.getContext("2d", {willReadFrequently: true}); // read back after every stroke
  $("drawn").getContext("2d", {willReadFrequently: true});
  let last = null;
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, pad.width, pad.height);
  };
  clear();
  const position = event => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  };
  const stroke = event => {
    const point = position(event);
    context.strokeStyle = "#fff";
    context.lineWidth = 20;
    context.lineCap = context.lineJoin = "round";
    context.beginPath();
    context.moveTo(...(last || point));
    context.lineTo(...point);
    context.stroke();
    last = point;
    if (fitDrawing()) encodeDrawn();
  };
  pad.addEventListener("pointerdown", event => {
    pad.setPointerCapture(event.pointerId);
    last = null;
    stroke(event);
  });
  pad.addEventListener("pointermove", event => { if (last !== null) stroke(event); });
  pad.addEventListener("pointerup", () => { last = null; });
  $("clear").addEventListener("click", () => {
    clear();
    state.code = null;
    explorer.code = null;
    $("code").textContent = "";
    [$("drawn"), $("reconstruction")].forEach(canvas => paintDigit(canvas, new Array(SIDE * SIDE).fill(0)));
    drawMarks();
  });
  pad.addEventListener("dragover", event => { event.preventDefault(); pad.classList.add("dropping"); });
  pad.addEventListener("dragleave", () => pad.classList.remove("dropping"));
  pad.addEventListener("drop", event => {
    event.preventDefault();
    pad.classList.remove("dropping");
    if (event.dataTransfer.files.length) useImageFile(event.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", event => { if (event.target.files.length) useImageFile(event.target.files[0]); });
}

// An image file, resized to 28x28 grey levels; dark ink on a light background (paper) is inverted to
// MNIST's light ink on black.
async function useImageFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (error) {
    showError(`${file.name}: not an image the browser can read`);
    return;
  }
  const drawn = $("drawn").getContext("2d");
  drawn.fillStyle = "#000";
  drawn.fillRect(0, 0, SIDE, SIDE);
  drawn.imageSmoothingQuality = "high";
  drawn.drawImage(bitmap, 0, 0, SIDE, SIDE);
  let pixels = greyLevels($("drawn"));
  const border = pixels.filter((_, i) => i < SIDE || i >= SIDE * (SIDE - 1) || i % SIDE === 0 || i % SIDE === SIDE - 1);
  if (border.reduce((sum, value) => sum + value, 0) / border.length > 127) pixels = pixels.map(value => 255 - value);
  paintDigit($("drawn"), pixels);
  const pad = $("pad").getContext("2d");
  pad.imageSmoothingEnabled = false;
  pad.drawImage($("drawn"), 0, 0, 280, 280);
  requestCode(pixels);
}

// --- samples -------------------------------------------------------------------------------------

const requestSamples = latestOnly(async seed => {
  const answer = await api("/api/samples", labelled({seed}));
  $("samples").replaceChildren(...answer.pixels.map((pixels, k) => digitCanvas(pixels, `sample ${k + 1}`)));
});

// --- start ---------------------------------------------------------------------------------------

function setUpControls(info) {
  $("legend").replaceChildren(...info.class_names.map((name, label) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = TAB10[label % TAB10.length];
    item.append(swatch, name);
    return item;
  }));
  if (!info.variational) {
    $("normal-option").remove();
    $("sample").hidden = true;
    $("samples-note").hidden = false;
  }
  $("grid").addEventListener("change", event => {
    state.grid = event.target.value;
    requestGrid(state.grid);
  });
  if (info.conditional) {
    $("class-control").hidden = false;
    $("label").replaceChildren(...info.class_names.map((name, label) => new Option(name, label)));
    $("label").addEventListener("change", event => {
      state.label = Number(event.target.value);
      setZ(state.z); // same z, another class
      requestGrid(state.grid);
      if (state.code) encodeDrawn();
      if (state.ends.every(e => e !== null)) requestStrip();
      if (state.sampleSeed !== null) requestSamples(state.sampleSeed);
    });
  }
  if (info.latent_dim > 2) setUpSliders(info);
  const marks = $("marks-layer");
  let down = null;
  // pointerrawupdate (Chrome, on localhost too) comes as the pointer moves; pointermove waits for the next
  // frame, which would add up to a frame to every image.
  marks.addEventListener("onpointerrawupdate" in window ? "pointerrawupdate" : "pointermove", onPlanePointer);
  marks.addEventListener("pointerdown", event => {
    marks.setPointerCapture(event.pointerId);
    down = pointerPosition(event);
    onPlanePointer(event);
  });
  marks.addEventListener("pointerup", event => {
    const up = pointerPosition(event);
    if (down && Math.hypot(up[0] - down[0], up[1] - down[1]) < CLICK_PX) onPlaneClick(...up);
    down = null;
  });
  $("use-digits").addEventListener("click", () => {
    [0, 1].forEach(k => {
      const index = Math.min(Math.max(Number($(`index-${k}`).value) || 0, 0), info.labels.length - 1);
      setEnd(k, {index, z: zAt(...state.plane.coords[index])});
    });
  });
  $("sample").addEventListener("click", () => {
    state.sampleSeed = state.sampleSeed === null ? 0 : state.sampleSeed + 1;
    requestSamples(state.sampleSeed);
  });
}

function setUpSliders(info) {
  $("sliders").replaceChildren(...info.slider_ranges.map(([low, high], k) => {
    const label = document.createElement("label");
    const slider = document.createElement("input");
    Object.assign(slider, {type: "range", min: low, max: high, step: (high - low) / 1000});
    slider.addEventListener("input", () => {
      const z = state.z.slice();
      z[k] = Number(slider.value);
      setZ(z);
    });
    slider.addEventListener("change", () => requestGrid(state.grid)); // the grid's plane moved
    label.append(`z${k + 1}`, slider);
    return label;
  }));
  $("axes-control").hidden = false;
  const dims = [$("dim-x"), $("dim-y")];
  dims.forEach((select, axis) => {
    select.replaceChildren(...Array.from({length: info.latent_dim}, (_, k) => new Option(`z${k + 1}`, k)));
    select.value = axis;
  });
  const choose = () => {
    const kind = $("plane-kind").value;
    dims.forEach(select => { select.disabled = kind === "pca"; });
    if (kind === "dims" && dims[0].value === dims[1].value) return showError("choose two different dimensions");
    $("status").textContent = "";
    loadPlane(kind === "pca" ? "pca" : `${dims[0].value},${dims[1].value}`).catch(showError);
  };
  [$("plane-kind"), ...dims].forEach(select => select.addEventListener("change", choose));
  dims.forEach(select => { select.disabled = true; });
}

async function start() {
  const info = state.info = await api("/api/info");
  const kind = info.variational ? "VAE" : "autoencoder";
  $("run").textContent = `${info.model} (${kind}, latent ${info.latent_dim}) on ${info.dataset}` +
    `${info.binarize === "dynamic" ? " (binarized)" : ""}, ${info.epochs} epochs, test loss ` +
    `${info.test_loss.toFixed(2)} nats: ${info.workdir}`;
  setUpControls(info);
  setUpPad();
  await loadPlane(info.default_axes);
  explorer.ready = true;
}

start().catch(showError);
