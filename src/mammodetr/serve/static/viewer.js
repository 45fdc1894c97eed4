// mammodetr viewer: four views in the mirror-image hanging, window/level on 16-bit pixels, boxes, Grad-CAM.
// Plain JavaScript, no build step, nothing loaded from elsewhere (the server's Content-Security-Policy forbids it).
// Research use only.
"use strict";

(() => {
  const SLOTS = ["RCC", "LCC", "RMLO", "LMLO"];
  const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  const state = {
    info: null,
    exams: [],
    examIndex: -1,
    prediction: null,
    views: {},
    wl: { dc: 0, wf: 1 }, // window change shared by all views: centre shift (in default widths), width factor
    preset: "0",
    showBoxes: true,
    minScore: 0.5,
    showHeat: false,
    heatOpacity: 0.45,
    token: 0,
  };
  const $ = (id) => document.getElementById(id);
  const dpr = () => window.devicePixelRatio || 1;
  const fmt = (p) => (p === null || p === undefined ? "\u2013" : p.toFixed(3));

  // ---- server -------------------------------------------------------------------------------------------
  async function api(path, options = {}) {
    const res = await fetch(path, { credentials: "same-origin", ...options });
    const type = res.headers.get("content-type") || "";
    if (!res.ok) {
      let message = `${res.status} ${res.statusText}`;
      if (type.includes("json")) message = (await res.json()).error || message;
      throw new Error(message);
    }
    return type.includes("json") ? res.json() : res.arrayBuffer();
  }

  function uint16(buffer) {
    if (LITTLE_ENDIAN) return new Uint16Array(buffer);
    const view = new DataView(buffer);
    const out = new Uint16Array(buffer.byteLength / 2);
    for (let i = 0; i < out.length; i++) out[i] = view.getUint16(2 * i, true);
    return out;
  }

  // ---- messages -----------------------------------------------------------------------------------------
  function setStatus(text) { $("status").textContent = text || ""; }

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  // ---- one view -----------------------------------------------------------------------------------------
  function makeView(slot) {
    const el = document.querySelector(`.view[data-view="${slot}"]`);
    const v = { slot, el, canvas: el.querySelector("canvas"), image: null, u16: null, base: null, pixels: null,
      heat: null, record: null, k: 1, ox: 0, oy: 0, flip: false, boxesDrawn: 0 };
    wireView(v);
    return v;
  }

  function clearView(v) {
    Object.assign(v, { image: null, u16: null, base: null, pixels: null, heat: null, record: null });
    v.el.querySelector(".prob").textContent = "";
    v.canvas.removeAttribute("data-image-id");
    draw(v);
  }

  function resizeCanvas(v) {
    const w = Math.max(1, Math.round(v.canvas.clientWidth * dpr()));
    const h = Math.max(1, Math.round(v.canvas.clientHeight * dpr()));
    if (v.canvas.width !== w || v.canvas.height !== h) {
      v.canvas.width = w;
      v.canvas.height = h;
      if (v.image) fit(v);
    }
  }

  // Screen x = ox + s*k*x, y = oy + k*y in canvas pixels, for a point (x, y) of the original image; s = -1 mirrors.
  // The chest walls meet in the middle: right-breast views hug their cell's right edge, left-breast views its left.
  function fit(v) {
    const W = v.image.original_width, H = v.image.original_height;
    const cw = v.canvas.width, ch = v.canvas.height;
    v.k = Math.min(cw / W, ch / H);
    const left = v.slot[0] === "R" ? cw - W * v.k : 0;
    v.flip = Boolean(v.image.flip);
    v.ox = v.flip ? left + W * v.k : left;
    v.oy = (ch - H * v.k) / 2;
  }

  function currentWindow(v) {
    const wins = v.image.windows; // the file's windows, then "full range" last
    let base = wins[0];
    if (state.preset === "full") base = wins[wins.length - 1];
    else if (/^\d+$/.test(state.preset) && Number(state.preset) < wins.length - 1) base = wins[Number(state.preset)];
    let width = base.width * state.wl.wf;
    if (state.preset === "narrow") width *= 0.5;
    if (state.preset === "wide") width *= 2;
    return { center: base.center + state.wl.dc * base.width, width: Math.max(width, 1e-6), fn: base.function };
  }

  // The window as a 65536-entry table: exact linear (x - c) / w + 0.5, or DICOM's sigmoid.
  function applyWindow(v) {
    if (!v.u16) return;
    const w = currentWindow(v);
    const lut = new Uint8ClampedArray(65536);
    if (w.fn === "SIGMOID") {
      for (let u = 0; u < 65536; u++) lut[u] = 255 / (1 + Math.exp((-4 * (u - w.center)) / w.width));
    } else {
      for (let u = 0; u < 65536; u++) lut[u] = ((u - w.center) / w.width + 0.5) * 255;
    }
    const px = v.u16, data = v.pixels.data;
    for (let i = 0, j = 0; i < px.length; i++, j += 4) {
      const g = lut[px[i]];
      data[j] = g; data[j + 1] = g; data[j + 2] = g; data[j + 3] = 255;
    }
    v.base.getContext("2d").putImageData(v.pixels, 0, 0);
  }

  function draw(v) {
    resizeCanvas(v);
    const ctx = v.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, v.canvas.width, v.canvas.height);
    v.boxesDrawn = 0;
    if (v.base) {
      const W = v.image.original_width, H = v.image.original_height, s = v.flip ? -1 : 1;
      ctx.setTransform(s * v.k, 0, 0, v.k, v.ox, v.oy);
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(v.base, 0, 0, W, H);
      if (state.showHeat && v.heat) {
        ctx.globalAlpha = state.heatOpacity;
        ctx.drawImage(v.heat, 0, 0, W, H);
        ctx.globalAlpha = 1;
      }
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      if (state.showBoxes && v.record && v.record.boxes) drawBoxes(ctx, v);
    }
    v.canvas.dataset.boxesDrawn = String(v.boxesDrawn);
  }

  function drawBoxes(ctx, v) {
    const s = v.flip ? -1 : 1, d = dpr();
    ctx.lineWidth = 2 * d;
    ctx.font = `${12 * d}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    v.record.boxes.forEach((b, i) => {
      const score = v.record.scores[i];
      if (!(score >= state.minScore)) return;
      const xa = v.ox + s * v.k * b[0], xb = v.ox + s * v.k * b[2];
      const x = Math.min(xa, xb), y = v.oy + v.k * b[1];
      ctx.strokeStyle = "#ffd23f";
      ctx.strokeRect(x, y, Math.abs(xb - xa), v.k * (b[3] - b[1]));
      const label = score.toFixed(2), tw = ctx.measureText(label).width + 6 * d;
      const lx = Math.max(0, Math.min(x, v.canvas.width - tw)), ly = Math.max(16 * d, y);  // stay on the canvas
      ctx.fillStyle = "rgba(0, 0, 0, 0.65)";
      ctx.fillRect(lx, ly - 16 * d, tw, 16 * d);
      ctx.fillStyle = "#ffd23f";
      ctx.fillText(label, lx + 3 * d, ly - 2 * d);
      v.boxesDrawn += 1;
    });
  }

  function redrawAll() { SLOTS.forEach((slot) => draw(state.views[slot])); }

  let windowFrame = 0;
  function scheduleWindow() {
    if (windowFrame) return;
    windowFrame = requestAnimationFrame(() => {
      windowFrame = 0;
      SLOTS.forEach((slot) => applyWindow(state.views[slot]));
      redrawAll();
      $("wl-readout").textContent =
        `width \u00d7${state.wl.wf.toFixed(2)}, level ${state.wl.dc >= 0 ? "+" : ""}${state.wl.dc.toFixed(2)}`;
    });
  }

  function wireView(v) {
    let drag = null;
    v.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    v.canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, pan: e.shiftKey || e.button !== 0 };
      v.canvas.setPointerCapture(e.pointerId);
    });
    v.canvas.addEventListener("pointermove", (e) => {
      if (!drag || !v.image) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX;
      drag.y = e.clientY;
      if (drag.pan) {
        v.ox += dx * dpr();
        v.oy += dy * dpr();
        draw(v);
      } else { // right: wider window; down: higher level (darker)
        state.wl.wf = Math.min(50, Math.max(0.02, state.wl.wf * Math.exp(dx * 0.005)));
        state.wl.dc += dy * 0.002;
        scheduleWindow();
      }
    });
    const end = () => { drag = null; };
    v.canvas.addEventListener("pointerup", end);
    v.canvas.addEventListener("pointercancel", end);
    v.canvas.addEventListener("wheel", (e) => {
      if (!v.image) return;
      e.preventDefault();
      const f = Math.exp(-e.deltaY * 0.0015), mx = e.offsetX * dpr(), my = e.offsetY * dpr();
      v.ox = mx - (mx - v.ox) * f;
      v.oy = my - (my - v.oy) * f;
      v.k *= f;
      draw(v);
    }, { passive: false });
    v.canvas.addEventListener("dblclick", () => { if (v.image) { fit(v); draw(v); } });
    new ResizeObserver(() => draw(v)).observe(v.el);
  }

  // ---- heatmaps -----------------------------------------------------------------------------------------
  function jet(t) {
    const c = (x) => Math.max(0, Math.min(1, x));
    return [c(1.5 - Math.abs(4 * t - 3)), c(1.5 - Math.abs(4 * t - 2)), c(1.5 - Math.abs(4 * t - 1))];
  }

  function heatCanvas(cam) {
    const bytes = Uint8Array.from(atob(cam.data), (ch) => ch.charCodeAt(0));
    const canvas = document.createElement("canvas");
    canvas.width = cam.width;
    canvas.height = cam.height;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(cam.width, cam.height);
    for (let i = 0; i < bytes.length; i++) {
      const [r, g, b] = jet(bytes[i] / 255);
      img.data.set([r * 255, g * 255, b * 255, bytes[i] ? 255 : 0], 4 * i); // outside what the model saw: clear
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }

  async function loadHeatmaps(token) {
    setStatus("computing Grad-CAM\u2026");
    for (const slot of SLOTS) {
      const v = state.views[slot];
      if (!v.image || v.heat) continue;
      const cam = await api(`/api/images/${v.image.id}/gradcam`, { method: "POST" });
      if (token !== state.token) return;
      v.heat = heatCanvas(cam);
    }
    setStatus("");
  }

  async function setHeatmap(on) {
    state.showHeat = on;
    $("show-heatmap").checked = on;
    document.body.dataset.heatmap = "loading";
    try {
      if (on) await loadHeatmaps(state.token);
      redrawAll();
      document.body.dataset.heatmap = on ? "on" : "off";
    } catch (err) {
      showError(`Grad-CAM: ${err.message}`);
      document.body.dataset.heatmap = "error";
    }
  }

  // ---- exams --------------------------------------------------------------------------------------------
  async function refreshExams() {
    state.exams = (await api("/api/exams")).exams;
    const select = $("exam-select");
    select.textContent = "";
    state.exams.forEach((e, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      const missing = e.missing_views.length ? `, no ${e.missing_views.join(" ")}` : "";
      option.textContent = `${e.label} (${e.n_images} image${e.n_images === 1 ? "" : "s"}${missing})`;
      select.appendChild(option);
    });
  }

  async function loadImage(v, id, token) {
    const [info, buffer] = await Promise.all([api(`/api/images/${id}`), api(`/api/images/${id}/pixels`)]);
    if (token !== state.token) return;
    v.image = info;
    v.u16 = uint16(buffer);
    v.base = document.createElement("canvas");
    v.base.width = info.width;
    v.base.height = info.height;
    v.pixels = v.base.getContext("2d").createImageData(info.width, info.height);
    v.canvas.dataset.imageId = id;
    v.canvas.dataset.flip = String(Boolean(info.flip));
    applyWindow(v);
    resizeCanvas(v);
    fit(v);
    draw(v);
  }

  function addPresetOptions() {
    const select = $("wl-preset");
    select.querySelectorAll("option[data-extra]").forEach((o) => o.remove());
    const most = Math.max(0, ...SLOTS.map((s) => (state.views[s].image ? state.views[s].image.windows.length - 1 : 0)));
    for (let i = 1; i < most; i++) {
      const option = document.createElement("option");
      option.value = String(i);
      option.dataset.extra = "1";
      option.textContent = `File window ${i + 1}`;
      select.appendChild(option);
    }
    select.value = state.preset;
    if (select.value !== state.preset) { state.preset = "0"; select.value = "0"; }
  }

  async function loadExam(index) {
    if (index < 0 || index >= state.exams.length) return;
    const token = ++state.token;
    const exam = state.exams[index];
    state.examIndex = index;
    state.prediction = null;
    $("exam-select").value = String(index);
    $("download-json").disabled = true;
    $("download-sr").disabled = true;
    document.body.dataset.state = "loading";
    showError("");
    clearPrediction();
    setStatus("loading images\u2026");
    try {
      await Promise.all(SLOTS.map(async (slot) => {
        const v = state.views[slot];
        clearView(v);
        v.el.querySelector(".missing").hidden = Boolean(exam.views[slot]);
        if (exam.views[slot]) await loadImage(v, exam.views[slot], token);
      }));
      if (token !== state.token) return;
      addPresetOptions();
      scheduleWindow();
      setStatus("predicting\u2026");
      const prediction = await api(`/api/exams/${exam.id}/predict`, { method: "POST" });
      if (token !== state.token) return;
      state.prediction = prediction;
      showPrediction(prediction);
      if (state.showHeat) await loadHeatmaps(token);
      if (token !== state.token) return;
      redrawAll();
      setStatus("");
      $("download-json").disabled = false;
      $("download-sr").disabled = false;
      document.body.dataset.state = "ready";
    } catch (err) {
      if (token !== state.token) return;
      setStatus("");
      showError(err.message);
      document.body.dataset.state = "error";
    }
  }

  // ---- predictions --------------------------------------------------------------------------------------
  function setCall(pid, cid, p, positive) {
    $(pid).textContent = fmt(p);
    const call = $(cid);
    call.className = "call" + (positive === true ? " positive" : positive === false ? " negative" : "");
    call.textContent = positive === true ? "above operating point" : positive === false ? "below" : "";
  }

  function clearPrediction() {
    setCall("p-exam", "call-exam", null, null);
    setCall("p-breast-R", "call-breast-R", null, null);
    setCall("p-breast-L", "call-breast-L", null, null);
    $("image-list").textContent = "";
    $("missing-views").textContent = "";
  }

  function showPrediction(pred) {
    const records = pred.records;
    const exam = records.find((r) => r.record === "exam");
    const op = pred.operating_point;
    setCall("p-exam", "call-exam", exam.p_malignant, exam.positive);
    for (const lat of ["R", "L"]) {
      const b = records.find((r) => r.record === "breast" && r.laterality === lat);
      setCall(`p-breast-${lat}`, `call-breast-${lat}`, b ? b.p_malignant : null, b ? b.positive : null);
    }
    $("operating-point").textContent = `Operating point ${op.threshold.toFixed(2)} (${op.source}). Breast: ` +
      `${exam.breast_aggregate} of its views; exam: max of its breasts.` +
      (exam.notes.length ? ` ${exam.notes.join(" ")}` : "");
    const images = records.filter((r) => r.record === "image");
    for (const slot of SLOTS) {
      const v = state.views[slot];
      v.record = v.image ? images.find((r) => r.image_id === v.image.id) || null : null;
      const prob = v.el.querySelector(".prob");
      prob.textContent = !v.record ? "" : v.record.error ? "error" : fmt(v.record.p_malignant);
    }
    const list = $("image-list");
    list.textContent = "";
    for (const r of images) {
      const li = document.createElement("li");
      li.textContent = r.error ? `${r.view}: ${r.error}` : `${r.view}: ${fmt(r.p_malignant)} \u00b7 ${r.file_name}`;
      if (r.error) li.className = "err";
      list.appendChild(li);
    }
    $("missing-views").textContent = exam.missing_views.length
      ? `Missing views: ${exam.missing_views.join(", ")}.` : "All four views present.";
  }

  function download(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // ---- upload -------------------------------------------------------------------------------------------
  async function upload(files) {
    const limits = state.info.limits;
    if (files.length > limits.max_upload_files) {
      showError(`Upload: at most ${limits.max_upload_files} files at a time.`);
      return;
    }
    const form = new FormData();
    files.forEach((f) => form.append("files", f, f.name));
    setStatus("uploading\u2026");
    document.body.dataset.upload = "busy";
    let body;
    try {
      const res = await fetch("/api/upload", { method: "POST", body: form, credentials: "same-origin" });
      body = await res.json().catch(() => ({ error: `${res.status} ${res.statusText}` }));
    } catch (err) {
      body = { error: err.message };
    }
    setStatus("");
    const errors = (body.errors || []).map((e) => e.error);
    if (body.error) errors.push(body.error);
    if (body.exams && body.exams.length) {
      await refreshExams();
      await loadExam(state.exams.findIndex((e) => e.id === body.exams[0].id));
    }
    if (errors.length) showError(`Upload refused:\n${errors.join("\n")}`);
    document.body.dataset.upload = errors.length ? "error" : "done";
  }

  // ---- controls -----------------------------------------------------------------------------------------
  function reset() {
    state.wl = { dc: 0, wf: 1 };
    state.preset = "0";
    $("wl-preset").value = "0";
    SLOTS.forEach((slot) => { const v = state.views[slot]; if (v.image) fit(v); });
    scheduleWindow();
  }

  function setBoxes(on) {
    state.showBoxes = on;
    $("show-boxes").checked = on;
    redrawAll();
  }

  function wireControls() {
    $("exam-select").addEventListener("change", (e) => loadExam(Number(e.target.value)));
    $("prev-exam").addEventListener("click", () => loadExam(state.examIndex - 1));
    $("next-exam").addEventListener("click", () => loadExam(state.examIndex + 1));
    $("upload").addEventListener("change", async (e) => {
      const files = [...e.target.files];
      e.target.value = "";
      if (files.length) await upload(files);
    });
    $("wl-preset").addEventListener("change", (e) => {
      state.preset = e.target.value;
      state.wl = { dc: 0, wf: 1 };
      scheduleWindow();
    });
    $("reset").addEventListener("click", reset);
    $("show-boxes").addEventListener("change", (e) => setBoxes(e.target.checked));
    $("score-threshold").addEventListener("input", (e) => {
      state.minScore = Number(e.target.value);
      $("score-threshold-value").textContent = state.minScore.toFixed(2);
      redrawAll();
    });
    $("show-heatmap").addEventListener("change", (e) => setHeatmap(e.target.checked));
    $("heatmap-opacity").addEventListener("input", (e) => {
      state.heatOpacity = Number(e.target.value);
      redrawAll();
    });
    $("download-json").addEventListener("click", () => {
      const p = state.prediction;
      if (!p) return;
      const data = { exam: p.exam.label, operating_point: p.operating_point, records: p.records,
        research_use_only: state.info.research_use_only };
      download(new Blob([JSON.stringify(data, null, 1)], { type: "application/json" }), "mammodetr-predictions.json");
    });
    $("download-sr").addEventListener("click", () => {
      const p = state.prediction;
      if (!p) return;
      const a = document.createElement("a");
      a.href = `/api/exams/${p.exam.id}/sr`;
      a.download = "mammodetr-sr.zip";
      a.click();
    });
    document.addEventListener("keydown", (e) => {
      const t = e.target;
      const typing = ["SELECT", "TEXTAREA"].includes(t.tagName) || (t.tagName === "INPUT" && t.type !== "checkbox");
      if (e.ctrlKey || e.metaKey || e.altKey || (typing && (t.type !== "range" || e.key.startsWith("Arrow")))) return;
      const key = e.key.toLowerCase();
      if (key === "n" || e.key === "ArrowRight") loadExam(state.examIndex + 1);
      else if (key === "p" || e.key === "ArrowLeft") loadExam(state.examIndex - 1);
      else if (key === "b") setBoxes(!state.showBoxes);
      else if (key === "h" && !$("show-heatmap").disabled) setHeatmap(!state.showHeat);
      else if (key === "r") reset();
      else return;
      e.preventDefault();
    });
  }

  async function init() {
    SLOTS.forEach((slot) => { state.views[slot] = makeView(slot); });
    wireControls();
    try {
      state.info = await api("/api/info");
      $("banner-text").textContent = state.info.research_use_only.replace(/^research use only\.\s*/i, "");
      $("model-info").textContent = `mammodetr ${state.info.version} \u00b7 ${state.info.model.backbone} at ` +
        `${state.info.model.image_size} px`;
      $("download-sr").hidden = !state.info.sr;
      if (!state.info.gradcam) {
        $("show-heatmap").disabled = true;
        $("show-heatmap").parentElement.title = "Grad-CAM needs a PyTorch checkpoint and mammodetr[gradcam]";
      }
      await refreshExams();
    } catch (err) {
      showError(err.message);
      document.body.dataset.state = "error";
      return;
    }
    if (state.exams.length) await loadExam(0);
    else {
      setStatus("No exams yet: start the server with --images DIR, or upload DICOM files.");
      document.body.dataset.state = "ready";
    }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
