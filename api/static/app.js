// Quarry's web page: plain ES modules, no framework, no build step. Every call sends the API key typed in
// the page (kept in localStorage); server strings are always rendered as text.
import { renderAnswer } from "./answer.js";
import { addJob, onIngestEnded } from "./jobs.js";
import {
  $, API, ApiError, api, apiKey, authHeaders, clearProblem, collectionName, el, formatBytes, networkProblem,
  recall, remember, report, showProblem, toProblem,
} from "./lib.js";

const STORE = { key: "quarry.apiKey", collection: "quarry.collection" };
let collections = [];
let askSeq = 0;

// ---- collections -------------------------------------------------------------------------------

async function loadCollections({ quiet = false } = {}) {
  const box = $("settings-problem");
  clearProblem(box);
  try {
    const data = await api("GET", `${API}/collections`);
    collections = (data && data.items) || [];
    $("collection-list").replaceChildren(...collections.map((c) => el("option", { value: c.name })));
    describeCollection();
  } catch (err) {
    collections = [];
    if (quiet && err instanceof ApiError && err.problem.status === 401) {
      $("collection-info").textContent = "Type your API key to start.";
    } else {
      $("collection-info").textContent = "";
      report(box, err);
    }
  }
}

function describeCollection() {
  const name = collectionName();
  const found = collections.find((c) => c.name === name);
  let text;
  if (found) text = `${found.documents} documents, ${found.chunks} chunks`;
  else if (!name) text = `${collections.length} collection(s); empty means the service's default`;
  else text = `new collection (${collections.length} existing)`;
  $("collection-info").textContent = text;
}

// ---- upload ------------------------------------------------------------------------------------

function setUpload(sent, total, note) {
  const bar = $("upload-progress");
  bar.max = Math.max(total, 1);
  bar.value = Math.min(sent, bar.max);
  const pct = total ? Math.round((100 * sent) / total) : 0;
  $("upload-status").textContent = `${pct} % · ${formatBytes(sent)} of ${formatBytes(total)}${note ? ` · ${note}` : ""}`;
}

function showChosen() {
  const files = [...$("files").files];
  const size = files.reduce((n, f) => n + f.size, 0);
  $("dropzone").querySelector(".hint").textContent = files.length
    ? `${files.length} file(s) chosen, ${formatBytes(size)}`
    : "or drop them here";
}

function upload(event) {
  event.preventDefault();
  const box = $("upload-problem");
  clearProblem(box);
  const files = [...$("files").files];
  if (!files.length) {
    showProblem(box, { status: 0, title: "No files chosen", detail: "Choose one or more files or a .zip archive.", errors: [] });
    return;
  }
  const form = new FormData();
  if (collectionName()) form.append("collection", collectionName());
  form.append("on_duplicate", $("on-duplicate").value);
  for (const file of files) form.append("files", file, file.name);
  let total = files.reduce((n, f) => n + f.size, 0);
  const xhr = new XMLHttpRequest();
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) total = e.total;
    setUpload(e.loaded, total, "sending");
  });
  xhr.upload.addEventListener("load", () => setUpload(total, total, "sent, waiting for the service"));
  xhr.addEventListener("load", () => uploaded(xhr, files, total));
  xhr.addEventListener("error", () => uploadFailed(networkProblem("The upload")));
  xhr.addEventListener("abort", () => uploadFailed(networkProblem("The upload")));
  xhr.open("POST", `${API}/documents`);
  xhr.setRequestHeader("Accept", "application/json, application/problem+json");
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  $("upload-button").disabled = true;
  setUpload(0, total, "sending");
  xhr.send(form);
}

function uploaded(xhr, files, total) {
  $("upload-button").disabled = false;
  let data = null;
  try {
    data = JSON.parse(xhr.responseText);
  } catch {
    /* not JSON */
  }
  if (xhr.status === 202 && data && data.job_id) {
    setUpload(total, total, `accepted as job ${data.job_id.slice(0, 8)}`);
    const label = files.length === 1 ? files[0].name : `${files.length} files`;
    addJob(data.job_id, "ingest", label);
    $("files").value = "";
    showChosen();
  } else {
    uploadFailed(toProblem(xhr.status, xhr.statusText, data, xhr.responseText));
  }
}

function uploadFailed(problem) {
  $("upload-button").disabled = false;
  $("upload-progress").value = 0;
  $("upload-status").textContent = "Upload refused or failed";
  showProblem($("upload-problem"), problem);
}

// ---- ask ---------------------------------------------------------------------------------------

function askBody(question) {
  const body = { question };
  const topK = Number($("top-k").value);
  if (topK) body.top_k = topK;
  if (collectionName()) body.collection = collectionName();
  if ($("mode").value) body.mode = $("mode").value;
  const reranker = $("reranker").value;
  if (reranker === "off") body.rerank = false;
  else if (reranker) body.reranker = reranker;
  return body;
}

async function ask(event) {
  event.preventDefault();
  const box = $("ask-problem");
  clearProblem(box);
  const question = $("question").value.trim();
  if (!question) {
    showProblem(box, { status: 0, title: "No question", detail: "Type a question first.", errors: [] });
    return;
  }
  const seq = ++askSeq;
  const status = $("ask-status");
  status.textContent = "Submitting…";
  try {
    const accepted = await api("POST", `${API}/ask`, askBody(question));
    status.textContent = `Waiting for the answer (job ${accepted.job_id.slice(0, 8)})…`;
    const record = await addJob(accepted.job_id, "ask", question).done;
    if (seq !== askSeq) return; // a newer question owns the results area
    if (record && record.state === "succeeded") {
      status.textContent = "";
      renderAnswer(record.result);
    } else {
      status.textContent = "";
      const detail = record ? record.error || `the job ended ${record.state}` : "the job could not be followed (see Jobs)";
      showProblem(box, { status: 0, title: "No answer", detail, errors: [] });
    }
  } catch (err) {
    if (seq === askSeq) status.textContent = "";
    report(box, err);
  }
}

// ---- start -------------------------------------------------------------------------------------

function init() {
  $("api-key").value = recall(STORE.key);
  $("collection").value = recall(STORE.collection);
  $("api-key").addEventListener("change", () => {
    remember(STORE.key, apiKey());
    loadCollections();
  });
  $("collection").addEventListener("input", () => {
    remember(STORE.collection, collectionName());
    describeCollection();
  });
  $("settings").addEventListener("submit", (e) => {
    e.preventDefault();
    remember(STORE.key, apiKey());
    loadCollections();
  });
  $("refresh-collections").addEventListener("click", () => loadCollections());
  $("upload-form").addEventListener("submit", upload);
  $("files").addEventListener("change", showChosen);
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer && e.dataTransfer.files.length) {
      $("files").files = e.dataTransfer.files;
      showChosen();
    }
  });
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask-form").requestSubmit();
  });
  onIngestEnded(() => loadCollections({ quiet: true }));
  loadCollections({ quiet: !apiKey() });
}

init();
