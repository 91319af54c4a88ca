// A question's answer: the ranked passages with each stage's score, and the stage timings.
import { $, el, formatScore } from "./lib.js";

const SCORE_ORDER = ["dense", "bm25", "fusion", "rerank", "final"];
const TIMING_LABELS = { embed_ms: "embed", search_ms: "search", rerank_ms: "rerank" };

function chip(text, cls = "chip") {
  return el("li", { class: cls }, text);
}

export function renderAnswer(result) {
  const passages = Array.isArray(result.passages) ? result.passages : [];
  const chips = [
    chip(`${passages.length} passages`, "chip strong"),
    chip(`collection ${result.collection}`),
    chip(`search ${result.mode}`),
    chip(`reranker ${result.reranker || "none"}`),
  ];
  for (const [name, value] of Object.entries(result.timings || {})) {
    if (name === "batch_size") chips.push(chip(`batch of ${value}`));
    else chips.push(chip(`${TIMING_LABELS[name] || name.replace(/_ms$/, "")} ${Number(value).toFixed(1)} ms`, "chip timing"));
  }
  $("answer-meta").replaceChildren(...chips);
  const items = passages.map((p, i) => passageItem(p, i + 1));
  $("results").replaceChildren(...(items.length ? items : [el("li", { class: "empty muted" }, "No passage matched.")]));
  $("answer").hidden = false;
}

function scoreList(scores) {
  const names = [...SCORE_ORDER.filter((n) => n in scores), ...Object.keys(scores).filter((n) => !SCORE_ORDER.includes(n))];
  const ranking = "final" in scores ? "final" : "fusion";
  return el("dl", { class: "scores", "aria-label": "Scores per stage" },
    ...names.map((name) => el("div", { class: name === ranking ? "score ranking" : "score" },
      el("dt", {}, name), el("dd", {}, formatScore(scores[name])))));
}

function passageItem(p, rank) {
  const text = el("p", { class: "text" }, String(p.text || ""));
  const item = el("li", { class: "passage" },
    el("div", { class: "passage-head" },
      el("span", { class: "rank", "aria-label": `rank ${rank}` }, String(rank)),
      el("div", { class: "passage-title" },
        el("strong", { class: "title" }, String(p.title || p.doc_id)),
        el("span", { class: "source muted" }, `${p.doc_id} · chunk ${p.chunk_index}`))),
    text,
    scoreList(p.scores || {}));
  const meta = Object.entries(p.metadata || {});
  if (meta.length) {
    item.append(el("p", { class: "metadata muted" }, meta.map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(" · ")));
  }
  if ((p.text || "").length > 500) {
    text.classList.add("clamped");
    const toggle = el("button", { type: "button", class: "link" }, "Show all");
    toggle.addEventListener("click", () => {
      toggle.textContent = text.classList.toggle("clamped") ? "Show all" : "Show less";
    });
    item.insertBefore(toggle, text.nextSibling);
  }
  return item;
}
