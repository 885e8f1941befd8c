// The search page: plain JS, no build step, no network beyond this server.
// Every text from the index is put in the page with textContent (never innerHTML), so it is escaped.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "medsearch-token";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}

// ---- talking to the API ----

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch(path, { headers });
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

const MODES = ["dense", "hybrid", "lexical"];
let defaultMode = "";  // the index's (from /info): what a search that names no mode gets
let defaultRerank = 0;  // documents a search re-ranks when it names no number (0: off, or no re-ranker)
const ASKED_RERANK = 20;  // what the toggle asks for where re-ranking is off by default

// mode "": the index's default (hybrid where it has a lexical index), chosen by the service;
// rerank "": the service's default, "0": off, N: the top N re-scored by the cross-encoder
// Sentences a search may encode to quote hits that share no word with the query: a person reads
// the quotes, so the page asks for them (a service's own default is 0: API clients ask when they want).
const QUOTE_SENTENCES = 16;

function searchUrl(q, tier, k, filters = [], mode = "", rerank = "") {
  const params = new URLSearchParams({ q, tier, k: String(k), quote_sentences: String(QUOTE_SENTENCES) });
  if (mode) params.set("mode", mode);
  if (rerank !== "") params.set("rerank", rerank);
  for (const f of filters) params.append("filter", f);
  return "/search?" + params;
}

// The tier menu says what each tier is in this index (its dims, the fast tier's measured stage).
function describeTiers(info) {
  const dims = info.tier_dims || {}, full = info.full_dim, fast = info.fast || {};
  let fastText = `fast: ${dims.fast}-dim candidates, ${full}-dim re-rank`;
  if (dims.fast === full) fastText = `fast: ${full}-dim, exact`;
  else if (fast.stage === "binary") fastText = `fast: ${fast.candidates} candidates from ${full}-bit sign codes, ${full}-dim re-rank`;
  else if (fast.stage) fastText = `fast: ${fast.candidates} candidates from ${dims.fast}-dim vectors, ${full}-dim re-rank`;
  return { fast: fastText, light: `light: ${dims.light}-dim`, standard: `standard: ${dims.standard}-dim`,
           deep: `deep: ${full}-dim, exact` };
}

async function labelTiers() {
  try {
    const info = await api("/info");
    const labels = describeTiers(info);
    for (const option of $("tier").options) if (labels[option.value]) option.textContent = labels[option.value];
    defaultMode = info.default_mode || "";
    if (defaultMode) $("mode").options[0].textContent = `default: ${defaultMode}`;
    if (info.reranker) {  // a re-ranker to toggle: on by default where the index (or service) says so
      defaultRerank = info.default_rerank || 0;
      $("rerank-n").textContent = `(cross-encoder, top ${defaultRerank || ASKED_RERANK})`;
      $("rerank-option").hidden = false;
      const asked = readUrl().rerank;
      $("rerank").checked = asked === "" ? defaultRerank > 0 : asked !== "0";
    }
  } catch (e) { /* no token yet, or still loading: the generic labels stay */ }
}

function splitFilters(text) {
  return text.split(";").map((f) => f.trim()).filter(Boolean);
}

// ---- state in the URL: /?q=...&tier=...&k=...&compare=1, or /?doc=ID ----

function readUrl() {
  const params = new URLSearchParams(location.search);
  return {
    q: params.get("q") || "",
    tier: params.get("tier") || "fast",
    mode: MODES.includes(params.get("mode")) ? params.get("mode") : "",
    rerank: /^\d+$/.test(params.get("rerank") || "") ? params.get("rerank") : "",
    k: params.get("k") || "10",
    compare: params.get("compare") === "1",
    filters: params.getAll("filter"),
    doc: params.get("doc"),
    at: /^\d+-\d+$/.test(params.get("at") || "") ? params.get("at").split("-").map(Number) : null,
  };
}

function pageUrl(state) {
  const params = new URLSearchParams({ q: state.q, tier: state.tier, k: state.k });
  if (state.mode) params.set("mode", state.mode);
  if (state.rerank) params.set("rerank", state.rerank);
  if (state.compare) params.set("compare", "1");
  for (const f of state.filters || []) params.append("filter", f);
  return "/?" + params;
}

// ---- rendering ----

// Words not worth highlighting: the query's grammar, not its subject.
const STOPWORDS = new Set(("a an and are as at be but by can do does for from had has have how i if in into is it its " +
  "me my no not of on or our should so than that the their them then there these they this to was we were what " +
  "when where which who why will with you your").split(" "));

// A letter without its accents (é -> e, ñ -> n): people type "diabete" for "diabète".
function fold(text) {
  return text.normalize("NFD").replace(/\p{M}/gu, "");
}

function queryWords(query) {
  const words = fold(query.toLowerCase()).match(/[\p{L}\p{N}]+/gu) || [];
  return [...new Set(words.filter((w) => !STOPWORDS.has(w) && (w.length > 2 || /\d/.test(w))))];
}

// The snippet as text nodes, with the query's words wrapped in <mark>. Words match without their
// accents: the snippet is folded letter by letter, keeping where each folded letter came from.
function highlighted(text, words) {
  const span = el("span", { class: "snippet" });
  if (!words.length) { span.append(text); return span; }
  let folded = "";
  const origin = [];
  for (let i = 0; i < text.length; i++) {
    const part = fold(text[i]);
    folded += part;
    for (let j = 0; j < part.length; j++) origin.push(i);
  }
  origin.push(text.length);
  const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join("|")})[\\p{L}]{0,3}(?![\\p{L}\\p{N}])`, "giu");
  let last = 0;
  for (const match of folded.matchAll(pattern)) {
    const start = origin[match.index], end = origin[match.index + match[0].length];
    span.append(text.slice(last, start), el("mark", {}, text.slice(start, end)));
    last = end;
  }
  span.append(text.slice(last));
  return span;
}

// "p. 3 · Dosage > Children": where in its document a hit's quote is
function citationText(citation) {
  return [citation && citation.page ? `p. ${citation.page}` : "", (citation && citation.section) || ""].filter(Boolean).join(" · ");
}

function hitItem(hit, rank, words, mark) {
  const at = hit.quote ? `&at=${hit.quote.start}-${hit.quote.end}` : "";
  const link = el("a", { href: "/?doc=" + encodeURIComponent(hit.id) + at, class: "title" }, hit.title || hit.id);
  const head = el("div", { class: "hit-head" },
    el("span", { class: "rank", "aria-label": `rank ${rank}` }, String(rank) + "."), " ", link,
    " ", el("span", { class: "score", title: scoreTitle(hit) }, "score " + hit.score.toFixed(4)));
  const lists = Object.entries(hit.found_by || {});
  if (lists.length && !(lists.length === 1 && lists[0][0] === "dense")) {
    head.append(" ", el("span", { class: "found-by" }, lists.map(([name, rank]) => `${name} #${rank}`).join(" · ")));
  }
  const item = el("li", { class: "hit", "data-id": hit.id }, head, highlighted(hit.snippet, words));
  const fields = Object.entries(hit.metadata || {}).map(([key, value]) => `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`);
  const cited = citationText(hit.citation);
  const meta = [hit.source, cited, hit.id, ...fields].filter(Boolean).join(" · ");
  const foot = el("div", { class: "meta" }, meta);
  if (hit.url && /^https?:\/\//i.test(hit.url)) {
    // a PDF's page opens where the quote is (browsers' PDF viewers read #page=N)
    const page = hit.citation && hit.citation.page && /\.pdf($|[?#])/i.test(hit.url) ? `#page=${hit.citation.page}` : "";
    foot.append(" · ", el("a", { href: hit.url.split("#")[0] + page, rel: "noopener noreferrer" }, "source page"));
  }
  item.append(foot);
  if (mark) {
    item.classList.add(mark.shared ? "shared" : "only");
    item.append(el("span", { class: "badge" }, mark.shared ? "in both" : "only in " + mark.tier));
  }
  return item;
}

function scoreTitle(hit) {
  const lists = Object.keys(hit.found_by || {});
  if (hit.rerank_score != null) return `cross-encoder score (first stage ${hit.first_stage_score.toFixed(4)})`;
  if (hit.first_stage_score != null && hit.first_stage_score !== hit.score) {
    return `first stage ${hit.first_stage_score.toFixed(4)}, placed below the re-ranked hits`;
  }
  if (lists.includes("dense") && lists.includes("lexical")) return "fused score (found by both lists)";
  return lists.includes("lexical") && lists.length === 1 ? "BM25 score (or fused)" : "cosine similarity (or fused)";
}

function timingText(result, clientMs) {
  const parts = Object.entries(result.timings_ms).map(([stage, ms]) => `${stage} ${ms.toFixed(1)} ms`);
  parts.push(`round trip ${clientMs.toFixed(0)} ms`);
  return parts.join(" · ");
}

function showOnly(id) {
  for (const section of ["results", "compare-view", "document"]) $(section).hidden = section !== id;
}

function setError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// ---- actions ----

let latestSearch = 0;  // an answer to a search the user has since replaced is not shown

async function runSearch(state) {
  const mine = ++latestSearch;
  setError("");
  $("status").textContent = "Searching…";
  const words = queryWords(state.q);
  try {
    if (state.compare) {
      const started = performance.now();
      const [fast, deep] = await Promise.all([api(searchUrl(state.q, "fast", state.k, state.filters, state.mode, state.rerank)), api(searchUrl(state.q, "deep", state.k, state.filters, state.mode, state.rerank))]);
      if (mine !== latestSearch) return;
      const ms = performance.now() - started;
      const fastIds = new Set(fast.results.map((h) => h.id));
      const deepIds = new Set(deep.results.map((h) => h.id));
      const shared = [...fastIds].filter((id) => deepIds.has(id)).length;
      $("hits-fast").replaceChildren(...fast.results.map((h, i) => hitItem(h, i + 1, words, { shared: deepIds.has(h.id), tier: "fast" })));
      $("hits-deep").replaceChildren(...deep.results.map((h, i) => hitItem(h, i + 1, words, { shared: fastIds.has(h.id), tier: "deep" })));
      $("timings-fast").textContent = timingText(fast, ms);
      $("timings-deep").textContent = timingText(deep, ms);
      const n = Math.max(fast.results.length, deep.results.length);
      $("overlap").textContent = `Overlap of the top ${n}: ${shared} of ${n} documents in both tiers.`;
      showOnly("compare-view");
      $("status").textContent = `Compared fast and deep: ${shared} of ${n} shared.`;
    } else {
      const started = performance.now();
      const result = await api(searchUrl(state.q, state.tier, state.k, state.filters, state.mode, state.rerank));
      if (mine !== latestSearch) return;
      const ms = performance.now() - started;
      $("hits").replaceChildren(...result.results.map((h, i) => hitItem(h, i + 1, words)));
      const mode = state.mode || defaultMode;
      const reranked = state.rerank === "" ? defaultRerank : Number(state.rerank);
      const how = (mode === "lexical" ? "lexical" : `${mode === "hybrid" ? "hybrid, " : ""}${state.tier} tier`)
        + (reranked ? `, top ${reranked} re-ranked` : "");
      $("timings").textContent = `${how} · ` + timingText(result, ms);
      showOnly("results");
      $("status").textContent = result.results.length
        ? `${result.results.length} results for “${state.q}”.` : `No results for “${state.q}”.`;
    }
  } catch (err) {
    if (mine !== latestSearch) return;
    handleError(err, () => runSearch(state));
  }
}

// The document's text, with the characters [start, end) marked (a hit's quote) and scrolled to.
// Offsets count characters (code points, as Python does), not JavaScript's UTF-16 units.
function documentText(text, at) {
  const box = $("doc-text");
  const chars = /[\uD800-\uDFFF]/.test(text) ? Array.from(text) : text;
  const slice = (a, b) => (typeof chars === "string" ? chars.slice(a, b) : chars.slice(a, b).join(""));
  if (!at || !(at[0] < at[1]) || at[1] > chars.length) { box.textContent = text; return false; }
  const quote = el("mark", { id: "quote" }, slice(at[0], at[1]));
  box.replaceChildren(slice(0, at[0]), quote, slice(at[1]));
  quote.scrollIntoView({ block: "center" });
  return true;
}

async function showDocument(id, at) {
  setError("");
  try {
    const doc = await api("/documents/" + encodeURIComponent(id));
    $("doc-title").textContent = doc.title || doc.id;
    const meta = $("doc-meta");
    meta.replaceChildren([doc.source, doc.id].filter(Boolean).join(" · "));
    if (doc.url && /^https?:\/\//i.test(doc.url)) meta.append(" · ", el("a", { href: doc.url, rel: "noopener noreferrer" }, doc.url));
    for (const [key, value] of Object.entries(doc.metadata || {})) meta.append(" · ", `${key}: ${typeof value === "string" ? value : JSON.stringify(value)}`);
    showOnly("document");
    const quoted = documentText(doc.text, at);
    $("back").href = history.state && history.state.from ? history.state.from : "/";
    document.title = (doc.title || doc.id) + " · medsearch";
    $("status").textContent = "Showing document " + (doc.title || doc.id);
    $("doc-title").setAttribute("tabindex", "-1");
    $("doc-title").focus({ preventScroll: quoted });
  } catch (err) {
    handleError(err, () => showDocument(id, at));
  }
}

function handleError(err, retry) {
  $("status").textContent = "";
  if (err instanceof ApiError && err.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-form").hidden = false;
    $("token").focus();
    $("token-form").onsubmit = (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      $("token-form").hidden = true;
      labelTiers();
      retry();
    };
    setError("Access token needed: " + err.message);
  } else {
    setError(err.message || String(err));
  }
}

// The toggle as the URL keeps it: "" where it says what the service does by default anyway
function rerankChoice() {
  if ($("rerank-option").hidden || $("rerank").checked === defaultRerank > 0) return "";
  return $("rerank").checked ? String(ASKED_RERANK) : "0";
}

function render() {
  const state = readUrl();
  $("q").value = state.q;
  $("tier").value = ["fast", "light", "standard", "deep"].includes(state.tier) ? state.tier : "fast";
  $("k").value = state.k;
  $("mode").value = state.mode;
  $("rerank").checked = state.rerank === "" ? defaultRerank > 0 : state.rerank !== "0";
  $("compare").checked = state.compare;
  $("filters").value = state.filters.join("; ");
  $("tier").disabled = state.compare;
  if (state.doc) {
    showDocument(state.doc, state.at);
  } else if (state.q.trim()) {
    document.title = state.q + " · medsearch";
    runSearch(state);
  } else {
    showOnly(null);
    document.title = "medsearch";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const state = { q: $("q").value.trim(), tier: $("tier").value, mode: $("mode").value, k: $("k").value || "10", compare: $("compare").checked,
                    filters: splitFilters($("filters").value), rerank: rerankChoice() };
    if (!state.q) { setError("Type something to search for."); $("q").focus(); return; }
    history.pushState({}, "", pageUrl(state));
    render();
  });
  $("compare").addEventListener("change", () => { $("tier").disabled = $("compare").checked; });
  document.addEventListener("click", (event) => {  // document links stay in the page and remember the search
    const link = event.target.closest("a.title");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    history.pushState({ from: location.pathname + location.search }, "", link.getAttribute("href"));
    render();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== $("q") && !(event.target instanceof HTMLInputElement)) {
      event.preventDefault();
      $("q").focus();
      $("q").select();
    }
  });
  window.addEventListener("popstate", render);
  labelTiers();
  render();
  if (!readUrl().doc) $("q").focus();
});
