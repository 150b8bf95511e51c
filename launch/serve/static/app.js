// The page of launch/serve.py: reads GET /models, posts to /generate, shows the PNG grid.
"use strict";

const $ = (id) => document.getElementById(id);
let catalog = null;
let gridUrl = null;

function show(id, visible) {
  $(id).hidden = !visible;
}

function currentModel() {
  return catalog.models.find((m) => m.name === $("model").value);
}

function currentSampler() {
  return currentModel().samplers.find((s) => s.name === $("sampler").value);
}

function onModel() {
  const m = currentModel();
  const label = $("label");
  label.replaceChildren(new Option("all classes in turn", ""));
  m.classes.forEach((name, i) => label.add(new Option(`${i}: ${name}`, String(i))));
  show("label-row", m.conditional);
  show("guidance-row", m.guidance);
  if (m.guidance) $("guidance").value = m.guidance_default;
  const sampler = $("sampler");
  sampler.replaceChildren(...m.samplers.map((s) => new Option(s.name, s.name)));
  sampler.value = m.default_sampler;
  onSampler();
}

function onSampler() {
  const s = currentSampler();
  const steps = $("steps");
  steps.min = s.steps_min;
  steps.max = s.steps_max;
  steps.value = s.steps_default;
  steps.disabled = s.steps_min === s.steps_max;
  const eta = s.options.eta;
  show("eta-row", Boolean(eta));
  if (eta) $("eta").value = eta.default;
  const stepSize = s.options.step_size;
  show("step-size-row", Boolean(stepSize));
  if (stepSize) {
    $("step-size").value = stepSize.default;
    $("step-size").max = stepSize.max;
  }
}

function requestBody() {
  const m = currentModel();
  const body = {model: m.name, num_images: Number($("num").value), sampler: $("sampler").value,
                format: "png"};
  if (!$("steps").disabled) body.steps = Number($("steps").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if (m.conditional && $("label").value !== "") body.label = Number($("label").value);
  if (m.guidance && $("guidance").value !== "") body.guidance = Number($("guidance").value);
  if (!$("eta-row").hidden) body.eta = Number($("eta").value);
  if (!$("step-size-row").hidden) body.step_size = Number($("step-size").value);
  return body;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function generate(event) {
  event.preventDefault();
  const body = requestBody();
  const button = $("generate");
  button.disabled = true;
  setStatus(`generating ${body.num_images} image(s)…`);
  try {
    const r = await fetch("/generate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!r.ok) {
      const e = await r.json().catch(() => ({detail: r.statusText}));
      const retry = r.headers.get("Retry-After");
      setStatus(`error ${r.status}: ${e.detail}${retry ? ` (retry in ${retry} s)` : ""}`, true);
      $("grid").dataset.state = "error";
      return;
    }
    const blob = await r.blob();
    const img = $("grid");
    img.onload = () => {
      const scale = Math.max(1, Math.floor(512 / img.naturalWidth));
      img.style.width = `${img.naturalWidth * scale}px`;
      img.dataset.state = "loaded";
    };
    img.dataset.state = "loading";
    if (gridUrl) URL.revokeObjectURL(gridUrl);
    gridUrl = URL.createObjectURL(blob);
    img.src = gridUrl;
    const h = (name) => r.headers.get(name);
    setStatus(`${h("X-Num-Images")} image(s) from ${h("X-Model")}`);
    $("info").textContent = `seed ${h("X-Seed")}, ${h("X-Sampler")} with ${h("X-Steps")} steps, ` +
        `${h("X-Elapsed-Ms")} ms in the server (device call of ${h("X-Batch-Images")} images)`;
  } catch (err) {
    setStatus(`error: ${err}`, true);
  } finally {
    button.disabled = false;
  }
}

async function waitReady() {
  const badge = $("health");
  for (;;) {
    try {
      const r = await fetch("/health");
      const h = await r.json();
      badge.textContent = h.status.replace("_", " ");
      badge.className = "badge " + (h.ready ? "ready" : h.status === "failed" ? "down" : "waiting");
      if (h.ready || h.status === "failed") return h.ready;
    } catch (err) {
      badge.textContent = "unreachable";
      badge.className = "badge down";
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function init() {
  const r = await fetch("/models");
  catalog = await r.json();
  $("model").replaceChildren(...catalog.models.map(
      (m) => new Option(`${m.name} (${m.task}, ${m.dataset})`, m.name)));
  const num = $("num");
  for (const n of [1, 4, 9, 16, 25, 36, 49, 64, 100, 256]) {
    if (n <= catalog.limits.max_images) num.add(new Option(String(n), String(n)));
  }
  num.value = String(Math.min(16, catalog.limits.max_images));
  if (num.value === "") num.selectedIndex = num.options.length - 1;
  $("model").addEventListener("change", onModel);
  $("sampler").addEventListener("change", onSampler);
  $("random-seed").addEventListener("click", () => {
    $("seed").value = String(Math.floor(Math.random() * 2 ** 31));
  });
  $("form").addEventListener("submit", generate);
  onModel();
  if (await waitReady()) $("generate").disabled = false;
  document.body.dataset.ready = "1";
}

init().catch((err) => setStatus(`error: ${err}`, true));
