// medvl web page: text or image query -> similar cases + zero-shot probability bars.
// Plain DOM code, no framework, no CDN. Report text is only ever set with textContent, never
// innerHTML, so a report cannot inject markup (the page's CSP forbids inline scripts as well).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "medvl-token";
  let health = null; // the /healthz answer: which optional endpoints the served model offers

  function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (token()) h["Authorization"] = "Bearer " + token();
    return h;
  }

  function setStatus(text) { $("status").textContent = text; }

  function showError(text) {
    const e = $("error");
    e.textContent = text;
    e.classList.toggle("hidden", !text);
  }

  async function api(path, options) {
    const res = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
    if (res.status === 401) {
      $("token-box").classList.remove("hidden");
      throw new Error("This server needs an access token: enter it above and retry.");
    }
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (!res.ok) {
      const detail = body && body.detail;
      const msg = typeof detail === "string" ? detail : (Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : res.statusText);
      const err = new Error(msg || ("HTTP " + res.status));
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function renderResults(data) {
    const grid = $("results");
    grid.replaceChildren();
    $("results-title").classList.remove("hidden");
    $("results-title").textContent = data.results.length ? "Similar cases" : "No similar cases found";
    for (const hit of data.results) {
      const card = el("article", "card result-card");
      if (hit.thumbnail) {
        const img = el("img");
        img.src = "data:image/png;base64," + hit.thumbnail;
        img.alt = "case " + hit.id;
        img.loading = "lazy";
        card.appendChild(img);
      }
      const meta = el("div", "meta");
      meta.appendChild(el("span", null, "case #" + hit.id));
      meta.appendChild(el("span", "score", "similarity " + hit.score.toFixed(3)));
      card.appendChild(meta);
      const labels = el("div", "labels");
      for (const [name, value] of Object.entries(hit.labels || {})) {
        if (value === 1) labels.appendChild(el("span", "label pos", name));
        else if (value === -1) labels.appendChild(el("span", "label", name + "?"));
      }
      if (labels.childElementCount) card.appendChild(labels);
      card.appendChild(el("p", "report", hit.text || "(no report)"));
      grid.appendChild(card);
    }
  }

  function renderFindings(data) {
    const list = $("bars");
    list.replaceChildren();
    $("findings-mode").textContent = data.mode === "pairwise" ? "(each finding: present vs absent)" : "(one of the classes)";
    const classes = data.classes.slice().sort((a, b) => b.probability - a.probability);
    for (const c of classes) {
      const row = el("li", "bar-row");
      row.appendChild(el("span", "bar-name", c.name));
      const track = el("div", "bar-track");
      track.setAttribute("role", "meter");
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "100");
      const pct = Math.round(c.probability * 1000) / 10;
      track.setAttribute("aria-valuenow", String(pct));
      track.setAttribute("aria-label", c.name);
      const fill = el("div", "bar-fill");
      fill.style.width = pct + "%";
      track.appendChild(fill);
      row.appendChild(track);
      row.appendChild(el("span", "bar-value", pct.toFixed(1) + "%"));
      list.appendChild(row);
    }
    $("findings").classList.remove("hidden");
  }

  function renderDraft(data) {
    // textContent only: a generated report never becomes markup.
    if (!data) { $("draft").classList.add("hidden"); return; }
    $("draft-text").textContent = data.report || "(empty)";
    $("draft-mode").textContent = "(" + data.method + (data.finished ? "" : ", cut at the token limit") + ")";
    $("draft").classList.remove("hidden");
  }

  async function busy(fn) {
    const btn = $("search-btn");
    btn.disabled = true;
    showError("");
    const t0 = performance.now();
    try {
      await fn();
      setStatus("done in " + Math.round(performance.now() - t0) + " ms");
    } catch (err) {
      showError(err.message || String(err));
      setStatus("");
    } finally {
      btn.disabled = false;
    }
  }

  async function searchText(event) {
    event.preventDefault();
    const text = $("q").value.trim();
    if (!text) { showError("Type a description to search."); return; }
    await busy(async () => {
      setStatus("searching…");
      $("findings").classList.add("hidden");
      $("draft").classList.add("hidden");
      const data = await api("/v1/search", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ text: text, k: 12 }),
      });
      renderResults(data);
    });
  }

  async function searchImage() {
    const file = $("file").files[0];
    if (!file) return;
    await busy(async () => {
      setStatus("analysing image…");
      const form = () => { const f = new FormData(); f.append("file", file); return f; };
      const withK = form();
      withK.append("k", "12");
      const searchP = api("/v1/search", { method: "POST", body: withK });
      // Ask only for what /healthz says the model offers (a refused request is a console error).
      const caps = health || { zero_shot: true, writes_reports: true };
      const zsP = !caps.zero_shot ? Promise.resolve(null) : api("/v1/zero-shot", { method: "POST", body: form() })
        .catch((err) => {
          if (err.status === 409) return null; // no card / no text tower: search only
          throw err;
        });
      const reportP = !caps.writes_reports ? Promise.resolve(null) : api("/v1/report", { method: "POST", body: form() })
        .catch((err) => {
          if (err.status === 409) return null; // the model has no caption decoder: no draft report
          throw err;
        });
      const [hits, zs, draft] = await Promise.all([searchP, zsP, reportP]);
      renderResults(hits);
      if (zs) renderFindings(zs); else $("findings").classList.add("hidden");
      renderDraft(draft);
    });
  }

  function readDataURL(file) {
    // data: URLs (the page's CSP allows data: images, not blob:)
    return new Promise((ok, bad) => { const r = new FileReader(); r.onload = () => ok(r.result); r.onerror = bad;
      r.readAsDataURL(file); });
  }

  function loadImg(src) {
    return new Promise((ok) => { const i = new Image(); i.onload = () => ok(i); i.onerror = () => ok(null); i.src = src; });
  }

  async function renderMask(file, data) {
    const s = data.summary;
    const canvas = $("seg-canvas");
    canvas.width = s.width; canvas.height = s.height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, s.width, s.height);
    const pic = await loadImg(await readDataURL(file)); // DICOM: the browser cannot draw it, the mask goes on black
    if (pic) ctx.drawImage(pic, 0, 0, s.width, s.height);
    const mask = await loadImg("data:image/png;base64," + data.mask_png);
    if (mask) {
      const off = document.createElement("canvas");
      off.width = s.width; off.height = s.height;
      const octx = off.getContext("2d");
      octx.drawImage(mask, 0, 0);
      const m = octx.getImageData(0, 0, s.width, s.height).data;
      const over = ctx.getImageData(0, 0, s.width, s.height);
      for (let i = 0; i < m.length; i += 4) {
        if (m[i] > 127) { // tint the masked pixels red, keep the anatomy visible underneath
          over.data[i] = Math.round(0.5 * over.data[i] + 127);
          over.data[i + 1] = Math.round(0.5 * over.data[i + 1]);
          over.data[i + 2] = Math.round(0.5 * over.data[i + 2]);
        }
      }
      ctx.putImageData(over, 0, 0);
    }
    $("seg-mode").textContent = "(" + s.method + ")";
    $("seg-summary").textContent = s.area_px
      ? (100 * s.fraction).toFixed(1) + "% of the image, " + s.components + " region(s)"
      : "nothing above the threshold";
    $("segment").classList.remove("hidden");
  }

  async function segmentImage(event) {
    event.preventDefault();
    const file = $("file").files[0];
    const text = $("seg-q").value.trim();
    if (!file) { showError("Upload an image first, then type what to outline."); return; }
    if (!text) { showError("Type what to outline, e.g. “left pleural effusion”."); return; }
    await busy(async () => {
      setStatus("outlining…");
      const f = new FormData();
      f.append("file", file);
      f.append("text", text);
      renderMask(file, await api("/v1/segment", { method: "POST", body: f }));
    });
  }

  async function loadHealth() {
    try {
      const h = await api("/healthz", { method: "GET" });
      health = h;
      $("model").textContent = "model " + h.model + " · " + h.index_size + " indexed cases" +
        (h.zero_shot ? " · " + h.classes.length + " findings" : "");
      if (!h.has_text) {
        $("q").disabled = true; $("q").placeholder = "This model has no text tower: upload an image";
        $("seg-q").disabled = true; $("seg-q").placeholder = "Outlining needs a text tower";
      }
    } catch (err) {
      showError("Server not reachable: " + err.message);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("text-form").addEventListener("submit", searchText);
    $("file").addEventListener("change", searchImage);
    $("seg-form").addEventListener("submit", segmentImage);
    $("token-save").addEventListener("click", () => {
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token").value = "";
      $("token-box").classList.add("hidden");
      showError("");
      setStatus("token saved for this tab");
    });
    loadHealth();
  });
})();
