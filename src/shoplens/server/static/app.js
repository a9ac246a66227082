// shoplens web page: drop, paste, pick or take a photo; POST /search; draw the answer.
// Plain DOM code, no libraries; every text from the server goes in through textContent.
"use strict";

(function () {
  const COLOURS = ["#e11d48", "#2563eb", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const INTENT_NAMES = { apparel: "Apparel", other_product: "Product", non_product: "Not a product" };
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), statusBox = $("status"), result = $("result");
  // The metadata fields the server's --card-fields names, shown under each card's title.
  const CARD_FIELDS = (() => {
    try {
      const names = JSON.parse(document.querySelector('meta[name="shoplens-card-fields"]').content || "[]");
      return Array.isArray(names) ? names.map(String) : [];
    } catch (err) { return []; }
  })();
  let current = null; // object URL of the photo shown
  let lastFile = null; // the photo searched last: "Search anyway" sends it again with a domain
  // A server with a read key wants it (or the write key) on every search and photo: asked for once,
  // kept for this tab only, sent as X-API-Key.
  const KEY_ITEM = "shoplens-key";
  let needsKey = false;
  let memoryKey = ""; // where sessionStorage is refused (private mode): for as long as the page lives

  function accessKey() {
    try { return sessionStorage.getItem(KEY_ITEM) || memoryKey; } catch (err) { return memoryKey; }
  }

  function authHeaders() {
    const key = accessKey();
    return key ? { "X-API-Key": key } : {};
  }

  function askForKey(message) {
    $("key-form").hidden = false;
    $("key-message").textContent = message;
    $("key").focus();
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showStatus(kind, message) {
    statusBox.hidden = false;
    statusBox.className = "status" + (kind === "error" ? " error" : "");
    statusBox.replaceChildren();
    if (kind === "busy") statusBox.append(el("span", "spinner"));
    statusBox.append(el("span", "status-text", message));
  }

  function hideStatus() { statusBox.hidden = true; statusBox.replaceChildren(); }

  function filters() {
    return $("filters").value.split(/[;\n]/).map((s) => s.trim()).filter(Boolean);
  }

  // domain: "apparel" or "other_product" searches the photo there whatever the intent gate says.
  async function search(file, domain) {
    if (!file || !(file.type || "").startsWith("image/") && file.type !== "") {
      showStatus("error", "That is not an image file: choose a photo (JPEG, PNG, WebP …).");
      return;
    }
    lastFile = file;
    $("query-photo").hidden = false;
    if (current) URL.revokeObjectURL(current);
    current = URL.createObjectURL(file);
    const img = $("query-img");
    img.src = current;
    $("boxes").replaceChildren();
    $("summary").replaceChildren();
    $("regions").replaceChildren();
    result.hidden = false;
    drop.classList.add("compact");
    showStatus("busy", "Searching the catalogue…");

    const form = new FormData();
    form.append("photo", file, file.name || "photo.jpg");
    const k = parseInt($("topk").value, 10);
    if (k > 0) form.append("top_k", String(Math.min(k, 100)));
    for (const f of filters()) form.append("filter", f);
    if (domain) form.append("domain", domain);

    const started = performance.now();
    let response, body;
    try {
      response = await fetch("/search", { method: "POST", body: form, headers: authHeaders() });
      body = await response.json();
    } catch (err) {
      showStatus("error", "The server could not be reached (" + err.message + ").");
      return;
    }
    const roundTrip = performance.now() - started;
    if (!response.ok) {
      showStatus("error", (body && body.error) || "The search failed (HTTP " + response.status + ").");
      if (response.status === 401) askForKey(accessKey() ? "That key was refused: enter the right one." : "This catalogue is private: enter its access key.");
      return;
    }
    hideStatus();
    if (!img.complete) await new Promise((ok) => { img.onload = ok; img.onerror = ok; });
    render(body, roundTrip);
  }

  // Words instead of a photo: POST /search/text, shown where the server says its store can (readyz text_search).
  async function searchText(text) {
    $("query-photo").hidden = true;
    $("summary").replaceChildren();
    $("regions").replaceChildren();
    result.hidden = false;
    showStatus("busy", "Searching the catalogue…");
    const body = { text: text, filters: filters() };
    const k = parseInt($("topk").value, 10);
    if (k > 0) body.top_k = Math.min(k, 100);
    const started = performance.now();
    let response, answer;
    try {
      response = await fetch("/search/text", {
        method: "POST", body: JSON.stringify(body), headers: Object.assign({ "Content-Type": "application/json" }, authHeaders()),
      });
      answer = await response.json();
    } catch (err) {
      showStatus("error", "The server could not be reached (" + err.message + ").");
      return;
    }
    if (!response.ok) {
      showStatus("error", (answer && answer.error) || "The search failed (HTTP " + response.status + ").");
      if (response.status === 401) askForKey(accessKey() ? "That key was refused: enter the right one." : "This catalogue is private: enter its access key.");
      return;
    }
    hideStatus();
    renderText(answer, performance.now() - started);
  }

  function renderText(r, roundTrip) {
    const summary = $("summary");
    const said = el("p", "text-query");
    said.id = "searched-text";
    said.append("Products that look like ", el("strong", null, "“" + r.text + "”"));
    summary.append(said);
    const timing = el("p", "timing");
    timing.id = "timing";
    timing.append("Answered in ", el("strong", null, formatMs(roundTrip)), " (search " + formatMs((r.timings_ms && r.timings_ms.total) || 0) + ")");
    summary.append(timing);
    (r.regions || []).forEach((region, i) => {
      const named = Object.assign({}, region, { label: INTENT_NAMES[region.domain] || region.domain });
      $("regions").append(regionSection(named, i, COLOURS[i % COLOURS.length]));
    });
  }

  function render(r, roundTrip) {
    const summary = $("summary");
    const pill = el("span", "intent " + r.intent, INTENT_NAMES[r.intent] || r.intent);
    pill.id = "intent";
    summary.append(pill);

    const timing = el("p", "timing");
    timing.id = "timing";
    const serverMs = (r.timings_ms && r.timings_ms.total) || 0;
    timing.append("Answered in ", el("strong", null, formatMs(roundTrip)), " (search " + formatMs(serverMs) + ")");
    summary.append(timing);

    const scores = el("div", "scores");
    for (const [name, value] of Object.entries(r.intent_scores || {})) {
      const row = el("div", "score");
      const bar = el("div", "bar");
      const fill = el("span");
      fill.style.width = Math.round(value * 100) + "%";
      bar.append(fill);
      row.append(el("span", null, INTENT_NAMES[name] || name), bar, el("span", "v", Math.round(value * 100) + "%"));
      scores.append(row);
    }
    summary.append(scores);

    if (r.intent === "non_product") {
      const card = el("div", "nonproduct");
      card.id = "nonproduct";
      card.append(el("h2", null, "This doesn't look like a product photo"));
      const why = r.reason ? " (" + r.reason.message + ")" : "";
      card.append(el("p", null, "shoplens did not search the catalogue for it" + why + ". Try a photo of a garment, an outfit or a product, or search it anyway:"));
      const buttons = el("div", "anyway");
      for (const [domain, label] of [["apparel", "Search anyway as clothing"], ["other_product", "Search anyway as a product"]]) {
        const button = el("button", "btn" + (domain === likelierDomain(r) ? " primary" : ""), label);
        button.type = "button";
        button.id = "anyway-" + domain;
        button.addEventListener("click", () => search(lastFile, domain));
        buttons.append(button);
      }
      card.append(buttons);
      summary.append(card);
      return;
    }
    if (r.predicted_intent && r.predicted_intent !== r.intent) {
      const note = el("p", "searched-as");
      note.id = "searched-as";
      const gate = (r.steps && r.steps.intent) || {};
      const predicted = INTENT_NAMES[r.predicted_intent] || r.predicted_intent;
      const why = gate.override ? "as asked" : gate.uncertain ? "not sure enough to stop it"
        : "the catalogue has no " + predicted.toLowerCase() + " products";
      note.textContent = "Looked like " + predicted + "; searched as " + (INTENT_NAMES[r.intent] || r.intent) + " (" + why + ").";
      summary.append(note);
    }

    const regions = r.regions || [];
    const chips = el("div", "chips");
    regions.forEach((region, i) => {
      const colour = COLOURS[i % COLOURS.length];
      if (region.box) drawBox(region, i, colour);
      if (regions.length > 1) {
        const chip = el("button", "chip");
        chip.type = "button";
        chip.style.setProperty("--c", colour);
        chip.append(el("i"), regionName(region));
        chip.addEventListener("click", () => document.getElementById("region-" + i).scrollIntoView({ behavior: "smooth", block: "start" }));
        chip.addEventListener("mouseenter", () => highlight(i, true));
        chip.addEventListener("mouseleave", () => highlight(i, false));
        chips.append(chip);
      }
      $("regions").append(regionSection(region, i, colour));
    });
    if (chips.childElementCount) summary.append(chips);
    if (!regions.length) $("regions").append(el("p", "empty", "Nothing to search in this photo."));
  }

  function likelierDomain(r) {
    const s = r.intent_scores || {};
    return (s.apparel || 0) >= (s.other_product || 0) ? "apparel" : "other_product";
  }

  function regionName(region) {
    const name = region.label || "whole photo";
    return name.charAt(0).toUpperCase() + name.slice(1);
  }

  function drawBox(region, i, colour) {
    const img = $("query-img");
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return;
    const [x0, y0, x1, y1] = region.box;
    const box = el("div", "box");
    box.dataset.region = String(i);
    box.style.setProperty("--c", colour);
    box.style.left = (100 * x0 / w) + "%";
    box.style.top = (100 * y0 / h) + "%";
    box.style.width = (100 * (x1 - x0) / w) + "%";
    box.style.height = (100 * (y1 - y0) / h) + "%";
    if (y0 / h < 0.06) box.classList.add("inside");
    box.append(el("span", "box-label", regionName(region)));
    $("boxes").append(box);
  }

  function highlight(i, on) {
    for (const b of document.querySelectorAll(".box")) b.classList.toggle("hot", on && b.dataset.region === String(i));
  }

  function regionSection(region, i, colour) {
    const section = el("section", "region");
    section.id = "region-" + i;
    section.style.setProperty("--c", colour);
    const head = el("div", "region-head");
    head.append(el("span", "swatch"), el("h2", null, regionName(region)));
    const n = (region.results || []).length;
    head.append(el("span", "muted", n === 1 ? "1 product" : n + " products"));
    section.append(head);
    section.addEventListener("mouseenter", () => highlight(i, true));
    section.addEventListener("mouseleave", () => highlight(i, false));
    if (!n) {
      const empty = el("div", "empty");
      empty.append(el("p", "reason", region.reason ? "No results: " + region.reason.message + "." : "No similar products in the catalogue."));
      if (region.reason && region.reason.hint) empty.append(el("p", "hint", "To find more: " + region.reason.hint + "."));
      section.append(empty);
      return section;
    }
    const grid = el("div", "grid");
    region.results.forEach((hit, pos) => grid.append(card(hit, pos + 1)));
    section.append(grid);
    return section;
  }

  function card(hit, position) {
    const c = el("article", "card");
    c.dataset.productId = hit.product_id;
    const thumb = el("div", "thumb");
    const img = el("img");
    img.loading = "lazy";
    img.alt = hit.title || hit.product_id;
    // image_url: the server's thumbnail of the photo that matched; older servers give none.
    const src = typeof hit.image_url === "string" && hit.image_url.startsWith("/") && !hit.image_url.startsWith("//")
      ? hit.image_url : "/images/of-product/" + encodeURIComponent(hit.product_id);
    showPhoto(img, src);
    thumb.append(img);
    c.append(thumb, el("span", "pos", "#" + position));
    const body = el("div", "body");
    body.append(el("div", "title", hit.title || hit.product_id));
    const fields = el("dl", "fields");
    for (const name of CARD_FIELDS) {
      const value = hit[name];
      if (value === undefined || value === null || value === "" || typeof value === "object") continue;
      const row = el("div", "field");
      row.dataset.field = name;
      row.append(el("dt", null, name), cardValue(value));
      fields.append(row);
    }
    if (fields.childElementCount) body.append(fields);
    const meta = el("div", "meta");
    meta.append(el("span", "cat", hit.category || "uncategorised"), el("span", "rank", "rank " + Number(hit.rank).toFixed(2)));
    body.append(meta);
    body.append(el("div", "id", hit.product_id));
    c.append(body);
    return c;
  }

  // A value that is an http(s) URL becomes a link (to a new tab, no referrer); anything else is text.
  function cardValue(value) {
    const dd = el("dd");
    const text = String(value);
    let url = null;
    if (typeof value === "string" && /^https?:\/\//i.test(text.trim())) {
      try { url = new URL(text.trim()); } catch (err) { url = null; }
    }
    if (url && (url.protocol === "http:" || url.protocol === "https:")) {
      const a = el("a", null, url.host + (url.pathname.length > 1 ? url.pathname : ""));
      a.href = url.href;
      a.target = "_blank";
      a.rel = "noopener noreferrer nofollow";
      a.title = url.href;
      dd.append(a);
    } else {
      dd.textContent = text;
    }
    return dd;
  }

  // An <img src> cannot send the key: with one, the photo is fetched and shown from memory.
  function showPhoto(img, url) {
    if (!needsKey) { img.src = url; return; }
    fetch(url, { headers: authHeaders() }).then((r) => (r.ok ? r.blob() : null)).then((blob) => {
      if (!blob) return;
      const local = URL.createObjectURL(blob);
      img.addEventListener("load", () => URL.revokeObjectURL(local), { once: true });
      img.src = local;
    }).catch(() => {});
  }

  function formatMs(ms) {
    return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
  }

  // -- input: pick, camera, drop, paste ---------------------------------------
  for (const id of ["pick", "camera"]) {
    $(id).addEventListener("change", (e) => {
      const file = e.target.files && e.target.files[0];
      if (file) search(file);
      e.target.value = "";
    });
  }
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => {
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) search(file);
  });
  // Dropping a photo anywhere on the page must not navigate away from it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        search(item.getAsFile());
        return;
      }
    }
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("pick").click(); }
  });
  $("filters").addEventListener("keydown", (e) => { if (e.key === "Enter") e.preventDefault(); });
  $("text-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("text-query").value.trim();
    if (text) searchText(text);
  });

  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key").value.trim();
    if (!key) return;
    memoryKey = key;
    try { sessionStorage.setItem(KEY_ITEM, key); } catch (err) { /* kept in memoryKey only */ }
    $("key").value = "";
    $("key-form").hidden = true;
    hideStatus();
    storeInfo();
  });

  // The store's size; while the server is still loading its models, ask again each second.
  const storeInfo = () => fetch("/readyz", { headers: authHeaders() }).then((r) => r.json()).then((s) => {
    needsKey = Boolean(s.reads_need_key);
    $("text-form").hidden = !(Array.isArray(s.text_search) && s.text_search.length);
    if (typeof s.products === "number") $("store-info").textContent = s.products.toLocaleString() + " products";
    else if (s.detail) $("store-info").textContent = s.detail;
    if (s.status === "starting") setTimeout(storeInfo, 1000);
    else if (needsKey && !accessKey()) askForKey("This catalogue is private: enter its access key.");
  }).catch(() => {});
  storeInfo();
})();
