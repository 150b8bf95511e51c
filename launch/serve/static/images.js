// The image tasks of the page: upload, draw or pick a test image, then POST it to /inpaint,
// /denoise or /energy (energy-based models). No dependencies: the drawn image is encoded as
// a PNG here (stored deflate blocks), in the model's own size and channels.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);
  const VIEW = 280;  // CSS pixels of the drawing canvas
  let models = [];
  let model = null;
  let sourceBlob = null;  // the exact bytes of an uploaded or picked image, until drawn on
  let drawing = false;
  let lastPoint = null;
  let boxStart = null;

  // -- PNG encoding ---------------------------------------------------------

  const CRC_TABLE = (() => {
    const table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  function adler32(bytes) {
    let a = 1, b = 0;
    for (let i = 0; i < bytes.length; i++) {
      a = (a + bytes[i]) % 65521;
      b = (b + a) % 65521;
    }
    return ((b << 16) | a) >>> 0;
  }

  class Bytes {
    constructor() { this.parts = []; this.length = 0; }
    push(array) { const a = Uint8Array.from(array); this.parts.push(a); this.length += a.length; }
    u32(n) { this.push([(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]); }
    concat() {
      const out = new Uint8Array(this.length);
      let at = 0;
      for (const p of this.parts) { out.set(p, at); at += p.length; }
      return out;
    }
  }

  function chunk(out, type, data) {
    const body = new Uint8Array(4 + data.length);
    for (let i = 0; i < 4; i++) body[i] = type.charCodeAt(i);
    body.set(data, 4);
    out.u32(data.length);
    out.push(body);
    out.u32(crc32(body));
  }

  // pixels: Uint8Array [height * width * channels], channels 1 (gray) or 3 (RGB).
  function encodePng(pixels, width, height, channels) {
    const stride = width * channels;
    const raw = new Uint8Array(height * (1 + stride));  // filter byte 0 (None) per row
    for (let y = 0; y < height; y++) {
      raw.set(pixels.subarray(y * stride, (y + 1) * stride), y * (1 + stride) + 1);
    }
    const z = new Bytes();
    z.push([0x78, 0x01]);
    for (let at = 0; at < raw.length; at += 65535) {  // stored (uncompressed) deflate blocks
      const block = raw.subarray(at, at + 65535);
      const n = block.length;
      z.push([at + 65535 >= raw.length ? 1 : 0, n & 255, n >>> 8, ~n & 255, (~n >>> 8) & 255]);
      z.push(block);
    }
    z.u32(adler32(raw));
    const ihdr = new Bytes();
    ihdr.u32(width);
    ihdr.u32(height);
    ihdr.push([8, channels === 1 ? 0 : 2, 0, 0, 0]);
    const png = new Bytes();
    png.push([137, 80, 78, 71, 13, 10, 26, 10]);
    chunk(png, "IHDR", ihdr.concat());
    chunk(png, "IDAT", z.concat());
    chunk(png, "IEND", new Uint8Array(0));
    return png.concat();
  }

  // -- the canvas -----------------------------------------------------------

  function size() {
    const [h, w, c] = model.image_shape;
    return {h, w, c};
  }

  function context() {
    return byId("canvas").getContext("2d", {willReadFrequently: true});
  }

  function canvasPng() {
    const {h, w, c} = size();
    const rgba = context().getImageData(0, 0, w, h).data;
    const pixels = new Uint8Array(h * w * c);
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < c; k++) pixels[i * c + k] = rgba[i * 4 + k];
    }
    return new Blob([encodePng(pixels, w, h, c)], {type: "image/png"});
  }

  function imageBlob() {
    return sourceBlob || canvasPng();
  }

  function clearCanvas() {
    const {h, w} = size();
    const ctx = context();
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    sourceBlob = null;
  }

  async function showOnCanvas(blob) {
    const {h, w} = size();
    const bitmap = await createImageBitmap(blob);
    const ctx = context();
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, w, h);
    ctx.drawImage(bitmap, 0, 0, w, h);
    sourceBlob = blob;
  }

  function pixelAt(event) {
    const {h, w} = size();
    const r = byId("canvas").getBoundingClientRect();
    return [Math.floor((event.clientY - r.top) / r.height * h),
            Math.floor((event.clientX - r.left) / r.width * w)];
  }

  function tool() {
    return document.querySelector("input[name=tool]:checked").value;
  }

  // A stroke from the previous mouse position (events arrive sparsely when the mouse is fast).
  function paint(event) {
    const [y, x] = pixelAt(event);
    const [y0, x0] = lastPoint || [y, x];
    const ctx = context();
    ctx.strokeStyle = tool() === "erase" ? "#000" : "#fff";
    ctx.lineWidth = 2.4;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(x0 + 0.5, y0 + 0.5);
    ctx.lineTo(x + 0.5, y + 0.5);
    ctx.stroke();
    lastPoint = [y, x];
    sourceBlob = null;  // drawn on: send the canvas
  }

  function box() {
    return ["top", "left", "height", "width"].map((k) => Number(byId(`box-${k}`).value));
  }

  function setBox(top, left, height, width) {
    const values = {top, left, height, width};
    for (const k in values) byId(`box-${k}`).value = String(values[k]);
    drawBox();
  }

  function drawBox() {
    const {h, w} = size();
    const overlay = byId("overlay");
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const [top, left, height, width] = box();
    ctx.strokeStyle = "#e33";
    ctx.lineWidth = 2;
    ctx.strokeRect(left * VIEW / w, top * VIEW / h, width * VIEW / w, height * VIEW / h);
  }

  function onDown(event) {
    if (tool() === "box") {
      boxStart = pixelAt(event);
      return;
    }
    drawing = true;
    lastPoint = null;
    paint(event);
  }

  function onMove(event) {
    if (boxStart) {
      const {h, w} = size();
      const [y, x] = pixelAt(event);
      const y1 = Math.max(0, Math.min(h - 1, y)), x1 = Math.max(0, Math.min(w - 1, x));
      const top = Math.min(boxStart[0], y1), left = Math.min(boxStart[1], x1);
      setBox(top, left, Math.abs(y1 - boxStart[0]) + 1, Math.abs(x1 - boxStart[1]) + 1);
    } else if (drawing) {
      paint(event);
    }
  }

  function onUp() {
    drawing = false;
    lastPoint = null;
    boxStart = null;
  }

  // -- requests -------------------------------------------------------------

  function setStatus(text, isError) {
    byId("image-status").textContent = text;
    byId("image-status").classList.toggle("error", Boolean(isError));
  }

  function showImage(id, base64) {
    const img = byId(id);
    img.src = `data:image/png;base64,${base64}`;
    img.dataset.state = "loaded";
  }

  async function post(path, fields) {
    const form = new FormData();
    form.append("image", imageBlob(), "image.png");
    form.append("model", model.name);
    for (const [k, v] of Object.entries(fields)) {
      if (v !== "" && v !== null && v !== undefined) form.append(k, String(v));
    }
    const r = await fetch(path, {method: "POST", body: form});
    const body = await r.json().catch(() => ({detail: r.statusText}));
    if (!r.ok) {
      const retry = r.headers.get("Retry-After");
      throw new Error(`error ${r.status}: ${body.detail}${retry ? ` (retry in ${retry} s)` : ""}`);
    }
    return body;
  }

  function chainFields(op) {
    const fields = {seed: byId("image-seed").value, format: "json",
                    steps: byId(`${op}-steps`).value, step_size: byId("image-step-size").value};
    if (model.conditional && byId("image-label").value !== "") {
      fields.label = byId("image-label").value;
    }
    return fields;
  }

  async function run(op) {
    const buttons = ["inpaint", "denoise", "energy"].map(byId);
    buttons.forEach((b) => { b.disabled = true; });
    setStatus(`${op}…`);
    try {
      if (op === "energy") {
        showEnergy(await post("/energy", {}));
        setStatus(`energy of the image under ${model.name}`);
        return;
      }
      const fields = chainFields(op);
      if (op === "inpaint") {
        const [top, left, height, width] = box();
        Object.assign(fields, {top, left, height, width});
      } else {
        fields.sigma = byId("sigma").value;
      }
      const body = await post(`/${op}`, fields);
      showImage("image-input", body.inputs[0]);
      showImage("image-result", body.images[0]);
      byId("energy-table").hidden = true;
      setStatus(`${op}: ${body.steps} Langevin steps of size ${body.step_size}` +
                (body.sigma ? `, σ ${body.sigma}` : "") +
                (body.labels ? `, class ${body.labels[0]}` : "") +
                ` (seed ${body.seed}, ${body.elapsed_ms} ms)`);
    } catch (err) {
      setStatus(String(err.message || err), true);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function showEnergy(body) {
    const table = byId("energy-table");
    const rows = [["E(x)", body.energy.toFixed(4)],
                  ["OOD score (higher = less like the data)", body.ood_score.toFixed(4)]];
    if (body.class_energies) {
      const name = (i) => body.classes[i] || String(i);
      rows.push(["predicted class", `${body.predicted_class}: ${name(body.predicted_class)}`]);
      const order = body.class_probabilities.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]);
      for (const [p, i] of order.slice(0, 3)) {
        rows.push([`p(${name(i)} | x)`, p.toFixed(3)]);
      }
    }
    table.replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = k;
      td.textContent = v;
      tr.append(th, td);
      return tr;
    }));
    table.hidden = false;
  }

  async function loadExamples() {
    const row = byId("examples-row");
    const list = byId("examples");
    list.replaceChildren();
    row.hidden = true;
    const r = await fetch(`/examples?model=${encodeURIComponent(model.name)}`);
    if (!r.ok) return;  // no test images on this server: upload or draw
    const body = await r.json();
    body.images.forEach((b64, i) => {
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${b64}`;
      img.alt = img.title = body.classes[body.labels[i]] || `class ${body.labels[i]}`;
      img.dataset.index = String(i);
      img.addEventListener("click", async () => {
        list.querySelectorAll("img").forEach((e) => e.classList.remove("picked"));
        img.classList.add("picked");
        const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
        await showOnCanvas(new Blob([bytes], {type: "image/png"}));
      });
      list.append(img);
    });
    row.hidden = body.images.length === 0;
  }

  function fillSteps(id, options) {
    const select = byId(id);
    select.replaceChildren(...options.steps_choices.map((s) => new Option(String(s), String(s))));
    select.value = String(options.steps_default);
  }

  function onModel() {
    model = models.find((m) => m.name === byId("image-model").value);
    const {h, w} = size();
    const canvas = byId("canvas");
    canvas.width = w;
    canvas.height = h;
    clearCanvas();
    const o = model.image_options;
    fillSteps("inpaint-steps", o.inpaint);
    fillSteps("denoise-steps", o.denoise);
    byId("image-step-size").value = o.inpaint.step_size_default;
    byId("image-step-size").max = o.inpaint.step_size_max;
    byId("sigma").value = o.sigma_default;
    byId("sigma").max = o.sigma_max;
    const label = byId("image-label");
    label.replaceChildren(new Option("none: the marginal E(x)", ""));
    model.classes.forEach((name, i) => label.add(new Option(`${i}: ${name}`, String(i))));
    byId("image-label-row").hidden = !model.conditional;
    setBox(Math.floor(h / 4), Math.floor(w / 4), Math.floor(h / 2), Math.floor(w / 2));
    loadExamples().catch(() => {});
  }

  async function ready() {
    for (;;) {
      try {
        const h = await (await fetch("/health")).json();
        if (h.ready || h.status === "failed") return h.ready;
      } catch (err) { /* the server is not up yet */ }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function init() {
    const catalog = await (await fetch("/models")).json();
    models = catalog.models.filter((m) => m.image_ops && m.image_ops.length);
    if (!models.length) return;
    byId("images").hidden = false;
    byId("image-model").replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    byId("image-model").addEventListener("change", onModel);
    byId("image-file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      try {
        await showOnCanvas(file);
        setStatus(`${file.name}: ${file.size} bytes`);
      } catch (err) {
        sourceBlob = file;  // not decodable here: the server says why
        setStatus(`${file.name}: the browser cannot show it; the server will check it`);
      }
    });
    byId("clear").addEventListener("click", clearCanvas);
    for (const k of ["top", "left", "height", "width"]) {
      byId(`box-${k}`).addEventListener("input", drawBox);
    }
    const canvas = byId("canvas");
    canvas.addEventListener("mousedown", onDown);
    canvas.addEventListener("mousemove", onMove);
    window.addEventListener("mouseup", onUp);
    for (const op of ["inpaint", "denoise", "energy"]) {
      byId(op).addEventListener("click", () => run(op));
    }
    onModel();
    if (await ready()) {
      ["inpaint", "denoise", "energy"].forEach((op) => { byId(op).disabled = false; });
    }
    document.body.dataset.imagesReady = "1";
  }

  init().catch((err) => setStatus(`error: ${err}`, true));
})();
