// PinCLIP search page: text and image search, and related pins of a clicked card (plain JS, no build).
"use strict";

const $ = (id) => document.getElementById(id);
const K = 24;

function setStatus(text) { $("status").textContent = text; }

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `${response.status} ${response.statusText}`);
  return body;
}

function card(hit) {
  const el = document.createElement("div");
  el.className = "card";
  el.tabIndex = 0;
  el.dataset.pinId = hit.pin_id;
  const title = hit.title || hit.pin_id;
  if (hit.image_url) {
    const img = document.createElement("img");
    img.src = hit.image_url;
    img.alt = title;
    img.loading = "lazy";
    el.appendChild(img);
  } else {
    const none = document.createElement("div");
    none.className = "noimg";
    none.textContent = "no image";
    el.appendChild(none);
  }
  const t = document.createElement("div");
  t.className = "title";
  t.textContent = title;
  t.title = title;
  const s = document.createElement("div");
  s.className = "score";
  s.textContent = `score ${hit.score.toFixed(3)}`;
  el.append(t, s);
  el.addEventListener("click", () => showRelated(hit.pin_id, title));
  el.addEventListener("keydown", (e) => { if (e.key === "Enter") showRelated(hit.pin_id, title); });
  return el;
}

function render(grid, hits) {
  grid.replaceChildren(...hits.map(card));
}

function showResults(label, body) {
  $("results-title").hidden = false;
  $("results-title").textContent = label;
  render($("results"), body.results);
  setStatus(`${body.results.length} results`);
}

async function searchText(q) {
  setStatus("searching…");
  try {
    const body = await getJSON(`/search/text?q=${encodeURIComponent(q)}&k=${K}`);
    $("related").hidden = true;
    showResults(`Results for “${q}”`, body);
  } catch (err) { setStatus(`Search failed: ${err.message}`); }
}

async function searchImage(file) {
  setStatus(`searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(K));
  try {
    const body = await getJSON("/search/image", { method: "POST", body: form });
    $("related").hidden = true;
    showResults(`Pins like ${file.name}`, body);
  } catch (err) { setStatus(`Image search failed: ${err.message}`); }
}

async function showRelated(pinId, title) {
  setStatus(`finding pins related to ${title}…`);
  try {
    const body = await getJSON(`/related/${encodeURIComponent(pinId)}?k=12`);
    $("related-title").textContent = title;
    render($("related-grid"), body.results);
    $("related").hidden = false;
    $("related").scrollIntoView({ behavior: "smooth", block: "start" });
    setStatus(`${body.results.length} related pins`);
  } catch (err) { setStatus(`Related pins failed: ${err.message}`); }
}

function setupDrop() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) searchImage(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("file").click(); });
  $("file").addEventListener("change", () => { if ($("file").files.length) searchImage($("file").files[0]); });
}

async function showHealth() {
  try {
    const h = await getJSON("/health");
    $("health").textContent = `${h.index_size.toLocaleString()} pins · ${h.index_kind} index · model ${h.model_version}`;
  } catch (err) { $("health").textContent = `service unavailable: ${err.message}`; }
}

$("text-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (q) searchText(q);
});
setupDrop();
showHealth();
