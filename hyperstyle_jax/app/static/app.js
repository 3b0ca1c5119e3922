// The editing page: a thin client of /api (see hyperstyle_jax/app/server.py).
// State kept here: the uploaded images (content hash keys) and the current one; the
// server keeps the inversions. Renders are coalesced: one request in flight, the latest
// control values sent when it returns.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, images: [], current: null, inFlight: false, again: false, version: 0 };

function message(text, kind) {
  const m = $("message");
  m.textContent = text || "";
  m.dataset.kind = text ? (kind || "note") : "none";
}

async function jsonOrError(resp) {
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((body && body.error) || `HTTP ${resp.status}`);
  return body;
}

// ---- controls from /api/info

function slider(parent, id, label, min, max, step, value) {
  const div = document.createElement("div");
  div.className = "slider";
  div.innerHTML = `<label for="${id}"></label><input type="range" id="${id}" min="${min}" ` +
    `max="${max}" step="${step}" value="${value}"><output id="${id}-value">${value}</output>`;
  div.querySelector("label").textContent = label;
  parent.appendChild(div);
  return div.querySelector("input");
}

function buildControls(info) {
  $("model-info").textContent =
    `${info.size}px generator, ${info.input_hw[0]}×${info.input_hw[1]} input, ` +
    `${info.n_iters} iterations, ${info.precision}; uploads up to ${info.max_upload_mb} MB`;
  if (info.directions.length) {
    $("interfacegan").hidden = false;
    for (const d of info.directions) {
      const s = slider($("ifg-sliders"), `ifg-${d}`, d, -5, 5, 0.25, 0);
      s.dataset.direction = d;
    }
  }
  if (info.ganspace.length) {
    $("ganspace").hidden = false;
    for (const e of info.ganspace) {
      const o = document.createElement("option");
      o.value = e.name; o.textContent = e.label; o.dataset.strength = e.strength;
      $("ganspace-select").appendChild(o);
    }
    $("ganspace-select").addEventListener("change", () => {
      const o = $("ganspace-select").selectedOptions[0];
      const v = o && o.dataset.strength ? o.dataset.strength : 0;
      $("ganspace-strength").value = v;
    });
  }
  $("styleclip").hidden = !info.styleclip;
  if (info.domains.length) {
    $("domain").hidden = false;
    for (const d of info.domains) {
      const o = document.createElement("option");
      o.value = d; o.textContent = d.replace(/^domain_/, "");
      $("domain-select").appendChild(o);
    }
  }
  if (info.examples.length) {
    $("examples").hidden = false;
    for (const e of info.examples) {
      const o = document.createElement("option");
      o.value = e; o.textContent = e;
      $("example-select").appendChild(o);
    }
  }
  for (const el of document.querySelectorAll("#controls input, #controls select")) {
    const ev = el.type === "text" ? "change" : "input";
    el.addEventListener(ev, () => {
      const out = $(`${el.id}-value`);
      if (out) out.textContent = el.value;
      requestRender();
    });
  }
}

function edits() {
  const e = { interfacegan: {} };
  for (const s of document.querySelectorAll("#ifg-sliders input")) {
    e.interfacegan[s.dataset.direction] = parseFloat(s.value);
  }
  if (state.info.ganspace.length && $("ganspace-select").value) {
    e.ganspace = $("ganspace-select").value;
    e.ganspace_strength = parseFloat($("ganspace-strength").value);
  }
  if (state.info.styleclip) {
    e.neutral = $("sc-neutral").value; e.target = $("sc-target").value;
    e.alpha = parseFloat($("sc-alpha").value); e.beta = parseFloat($("sc-beta").value);
  }
  if (state.info.domains.length) e.domain = $("domain-select").value;
  const other = $("interp-with").value;
  if (other && other !== state.current) {
    e.mix_with = other; e.mix_alpha = parseFloat($("interp-alpha").value);
  }
  return e;
}

// ---- uploads and inversion progress

function addToGallery(item) {
  if (state.images.some((x) => x.key === item.key)) return;
  state.images.push(item);
  const b = document.createElement("button");
  b.dataset.key = item.key; b.title = item.name;
  b.innerHTML = `<img alt="">`;
  b.addEventListener("click", () => select(item.key));
  $("gallery").appendChild(b);
  const o = document.createElement("option");
  o.value = item.key; o.textContent = item.name;
  $("interp-with").appendChild(o);
}

async function startItems(items) {
  const errors = [], notes = [];
  let first = null;
  for (const it of items) {
    if (it.error) { errors.push(it.error); continue; }
    if (it.note) notes.push(it.note);
    addToGallery(it);
    first = first || it;
    poll(it);
  }
  if (errors.length) message(errors.join(" · "), "error");
  else message(notes.join(" · "), "note");
  if (first) setCurrent(first.key);
}

async function upload() {
  const files = $("file-input").files;
  if (!files.length) { message("choose one or more photos first", "error"); return; }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  form.append("align", $("align").checked ? "true" : "false");
  message("uploading…", "note");
  try {
    const body = await jsonOrError(await fetch("/api/upload", { method: "POST", body: form }));
    await startItems(body.items);
  } catch (e) { message(`upload failed: ${e.message}`, "error"); }
}

async function useExample() {
  const name = $("example-select").value;
  const align = $("align").checked ? "true" : "false";
  try {
    const body = await jsonOrError(await fetch(
      `/api/example/${encodeURIComponent(name)}?align=${align}`, { method: "POST" }));
    await startItems(body.items);
  } catch (e) { message(`example failed: ${e.message}`, "error"); }
}

async function poll(item) {
  let since = 0;
  $("progress-box").hidden = false;
  for (;;) {
    let j;
    try {
      j = await jsonOrError(await fetch(`/api/job/${item.job}?since=${since}`));
    } catch (e) { message(e.message, "error"); return; }
    const mine = item.key === state.current;
    for (const url of j.images) {
      if (mine) {
        const fig = document.createElement("figure");
        fig.innerHTML = `<img alt=""><figcaption></figcaption>`;
        fig.querySelector("img").src = url;
        fig.querySelector("img").alt = since ? `iteration ${since}` : "W-encoder";
        fig.querySelector("figcaption").textContent = since ? `iteration ${since}` : "W-encoder";
        $("iterations").appendChild(fig);
      }
      if (since === 0) $("gallery").querySelector(`[data-key="${item.key}"] img`).src = url;
      since += 1;
    }
    if (mine) {
      const p = $("progress");
      p.dataset.state = j.status;
      p.textContent = j.status === "queued" ? `${item.name}: queued`
        : j.status === "running" ? `${item.name}: iteration ${Math.max(0, j.step)} / ${j.total}`
        : j.status === "done" ? `${item.name}: inverted (${j.total} iterations, ${j.seconds} s)`
        : `${item.name}: failed`;
    }
    if (j.status === "error") { message(j.error, "error"); return; }
    if (j.status === "done") {
      item.done = true;
      const b = $("gallery").querySelector(`[data-key="${item.key}"]`);
      b.querySelector("img").src = `/api/image/${item.key}/input.png`;
      b.dataset.done = "1";
      if (item.key === state.current) showInversion(item);
      return;
    }
    await new Promise((r) => setTimeout(r, 150));
  }
}

function setCurrent(key) {
  state.current = key;
  for (const b of $("gallery").children) b.classList.toggle("current", b.dataset.key === key);
  $("iterations").innerHTML = "";
}

function select(key) {
  setCurrent(key);
  const item = state.images.find((x) => x.key === key);
  if (item && item.done) {
    $("progress").textContent = `${item.name}: inverted`;
    showInversion(item);
  }
}

function showInversion(item) {
  $("input-img").src = `/api/image/${item.key}/input.png`;
  $("recon-img").src = `/api/image/${item.key}/reconstruction.png`;
  $("recon-img").dataset.key = item.key;
  $("controls").hidden = false;
  $("download-latents").href = `/api/latents/${item.key}.npz`;
  $("download-deltas").href = `/api/deltas/${item.key}.npz`;
  $("download-deltas").download = `${item.name.replace(/\.[^.]*$/, "")}.npz`;
  requestRender();
}

// ---- rendering

function requestRender() {
  const item = state.images.find((x) => x.key === state.current);
  if (!item || !item.done) return;
  if (state.inFlight) { state.again = true; return; }
  render(item);
}

async function render(item) {
  state.inFlight = true;
  const status = $("render-status");
  status.dataset.state = "rendering"; status.textContent = "rendering…";
  const sent = edits();
  try {
    const resp = await fetch("/api/render", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ key: item.key, edits: sent }),
    });
    if (!resp.ok) await jsonOrError(resp);
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const img = $("edit-img");
    const old = img.src;
    await new Promise((ok) => { img.onload = ok; img.onerror = ok; img.src = url; });
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    $("download-png").href = url;
    $("download-png").download = `${item.name.replace(/\.[^.]*$/, "")}_edit.png`;
    // an aligned upload: the same edits pasted into the uploaded photo (rendered on click)
    $("download-full").hidden = !item.aligned;
    if (item.aligned) {
      $("download-full").href =
        `/api/full/${item.key}.png?edits=${encodeURIComponent(JSON.stringify(sent))}`;
      $("download-full").download = `${item.name.replace(/\.[^.]*$/, "")}_full.png`;
    }
    state.version += 1;
    img.dataset.version = String(state.version);
    status.dataset.version = String(state.version);
    status.dataset.state = "done"; status.textContent = "";
  } catch (e) {
    status.dataset.state = "error"; status.textContent = "";
    message(`render failed: ${e.message}`, "error");
  }
  state.inFlight = false;
  if (state.again) { state.again = false; requestRender(); }
}

async function refine() {
  const item = state.images.find((x) => x.key === state.current);
  if (!item || !item.done) return;
  const btn = $("refine-btn");
  btn.disabled = true;
  message(`refining ${item.name} (${state.info.refine_steps} steps)…`, "note");
  try {
    const r = await jsonOrError(await fetch(`/api/refine/${item.key}`, { method: "POST" }));
    const refined = { key: r.key, name: `${r.name} (refined)`, aligned: r.aligned, done: true };
    addToGallery(refined);
    $("gallery").querySelector(`[data-key="${r.key}"] img`).src =
      `/api/image/${r.key}/reconstruction.png`;
    message(r.note, "note");
    select(r.key);
  } catch (e) {
    message(`refine failed: ${e.message}`, "error");
  }
  btn.disabled = false;
}

function reset() {
  for (const s of document.querySelectorAll("#ifg-sliders input")) s.value = 0;
  $("ganspace-select").value = ""; $("ganspace-strength").value = 0;
  $("sc-alpha").value = 0; $("domain-select").value = ""; $("interp-alpha").value = 0;
  for (const o of document.querySelectorAll("#controls output")) {
    const el = $(o.id.replace(/-value$/, ""));
    if (el) o.textContent = el.value;
  }
  requestRender();
}

async function main() {
  try {
    state.info = await jsonOrError(await fetch("/api/info"));
  } catch (e) { message(`cannot reach the server: ${e.message}`, "error"); return; }
  buildControls(state.info);
  $("upload-btn").addEventListener("click", upload);
  $("example-btn").addEventListener("click", useExample);
  $("reset-btn").addEventListener("click", reset);
  $("refine-btn").hidden = !state.info.refine_steps;
  $("refine-btn").addEventListener("click", refine);
  document.body.dataset.ready = "1";
}

main();
