// The jobs panel: each job followed until it ends (its Server-Sent Events; long-poll where the server
// cannot stream), with its progress and, for an upload, what happened to each document.
import { $, API, ApiError, NoStream, TERMINAL, api, clearProblem, el, report, sleep, stateClass, streamEvents } from "./lib.js";

// Long-poll (the fallback) returns when the job ends; ingest jobs are polled more often so progress moves.
const WAIT_S = 25; // the service caps it at MAX_WAIT_S
const PROGRESS_WAIT_S = 2;
const MAX_JOBS = 30;
const DOC_PAGE = 50;
const jobs = new Map();
const hooks = { ingestEnded: () => {} };

/** Called after each upload job ends (the page refreshes its collection counts). */
export function onIngestEnded(callback) {
  hooks.ingestEnded = callback;
}

export function addJob(id, kind, label) {
  const job = { id, kind, record: null };
  job.state = el("span", { class: `${stateClass("queued")} job-state` }, "queued");
  job.bar = el("progress", { max: 1, "aria-label": `Progress of job ${id.slice(0, 8)}` });
  job.counts = el("span", { class: "counts muted" });
  job.error = el("p", { class: "job-error", hidden: true });
  job.problem = el("div", { class: "problem", role: "alert", hidden: true });
  job.cancel = el("button", { type: "button", class: "secondary small", onclick: () => cancelJob(job) }, "Cancel");
  job.retry = el("button", { type: "button", class: "secondary small", hidden: true, onclick: () => retryJob(job) }, "Retry failed");
  job.resume = el("button", { type: "button", class: "secondary small", hidden: true, onclick: () => startFollowing(job) }, "Follow again");
  job.docRows = el("tbody");
  job.docSummary = el("summary", {}, "Documents");
  job.more = el("button", { type: "button", class: "secondary small", hidden: true, onclick: () => loadDocuments(job, job.nextOffset) }, "Show more");
  const table = el("table", { class: "docs-table", "aria-label": `Documents of job ${id.slice(0, 8)}` },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Document"), el("th", { scope: "col" }, "Outcome"),
      el("th", { scope: "col", class: "num" }, "Chunks"))),
    job.docRows);
  job.docs = el("details", { class: "docs", open: true, hidden: true }, job.docSummary, table, job.more);
  job.node = el("li", { class: `job job-${kind === "ask" ? "ask" : "ingest"}`, "data-job-id": id },
    el("div", { class: "job-head" },
      el("span", { class: "kind" }, kind),
      el("span", { class: "job-label", title: label }, label),
      el("code", { class: "job-id", title: id }, id.slice(0, 8)),
      job.state),
    el("div", { class: "progress-row" }, job.bar, job.counts),
    job.error, job.problem,
    el("div", { class: "actions" }, job.cancel, job.retry, job.resume),
    job.docs);
  jobs.set(id, job);
  $("jobs").prepend(job.node);
  $("jobs-empty").hidden = true;
  trimJobs();
  startFollowing(job);
  return job;
}

function trimJobs() {
  const ended = [...jobs.values()].filter((j) => j.record && TERMINAL.has(j.record.state));
  while (jobs.size > MAX_JOBS && ended.length) {
    const oldest = ended.shift();
    oldest.node.remove();
    jobs.delete(oldest.id);
  }
}

function counts(job, record) {
  const p = record.progress || {};
  if (job.kind === "ingest") {
    const parts = [`${p.done || 0} / ${p.total || 0} documents`];
    for (const name of ["succeeded", "failed", "skipped", "chunks"]) {
      if (typeof p[name] === "number") parts.push(`${p[name]} ${name}`);
    }
    return parts.join(" · ");
  }
  if (record.state === "succeeded" && record.result && Array.isArray(record.result.passages)) {
    return `${record.result.passages.length} passages`;
  }
  return record.state;
}

function render(job, record) {
  job.record = record;
  const terminal = TERMINAL.has(record.state);
  job.state.className = `${stateClass(record.state)} job-state`;
  job.state.textContent = record.state;
  const p = record.progress || {};
  const total = Number(p.total) || 0;
  job.bar.max = Math.max(total, 1);
  if (total) job.bar.value = Math.min(Number(p.done) || 0, total);
  else if (terminal) job.bar.value = 1;
  else job.bar.removeAttribute("value"); // indeterminate until the job knows its size
  job.counts.textContent = counts(job, record);
  job.error.textContent = record.error || "";
  job.error.hidden = !record.error;
  job.node.dataset.state = record.state;
  job.cancel.hidden = terminal;
  job.retry.hidden = !(job.kind === "ingest" && terminal && Number(p.failed) > 0);
}

async function pollOnce(job, failures) {
  try {
    const wait = job.kind === "ingest" ? PROGRESS_WAIT_S : WAIT_S;
    const record = await api("GET", `${API}/jobs/${job.id}?wait=${wait}`);
    clearProblem(job.problem);
    render(job, record);
    return { record, failures: 0, stop: TERMINAL.has(record.state) };
  } catch (err) {
    return failed(job, err, failures);
  }
}

/** Follow the job's events until it ends: one connection after another (the server closes each after
 * MAX_WAIT_S), resuming from the last event id. Resolves like pollOnce; throws NoStream. */
async function streamOnce(job, failures) {
  let record = null;
  try {
    const onEvent = (event) => {
      if (event.name === "error") throw new ApiError(JSON.parse(event.data));
      if (!["state", "progress", "end"].includes(event.name)) return;
      record = JSON.parse(event.data);
      clearProblem(job.problem);
      render(job, record);
      refreshDocuments(job, record);
    };
    const closed = await streamEvents(`${API}/jobs/${job.id}/events`, job.lastEventId, onEvent);
    job.lastEventId = closed.lastId;
    if (record && TERMINAL.has(record.state)) return { record, failures: 0, stop: true };
    await sleep(closed.retryMs);
    return { record: null, failures: 0, stop: false };
  } catch (err) {
    if (err instanceof NoStream) throw err;
    return failed(job, err, failures);
  }
}

async function failed(job, err, failures) {
  report(job.problem, err);
  const status = err instanceof ApiError ? err.problem.status : 0;
  if ([401, 403, 404, 422].includes(status)) return { record: null, failures, stop: true };
  const waitS = (err.problem && err.problem.retryAfter) || 2 ** Math.min(failures + 1, 5);
  await sleep(waitS * 1000);
  return { record: null, failures: failures + 1, stop: false };
}

/** Follow the job until it ends; resolves to its last record (null when it could not be followed). */
function startFollowing(job) {
  job.resume.hidden = true;
  job.done = (async () => {
    let failures = 0;
    let streaming = true;
    for (;;) {
      let outcome;
      try {
        outcome = streaming ? await streamOnce(job, failures) : await pollOnce(job, failures);
      } catch {
        streaming = false; // NoStream: long-poll from now on
        continue;
      }
      failures = outcome.failures;
      if (!outcome.stop) {
        if (!streaming) await refreshDocuments(job, outcome.record);
        continue;
      }
      if (!outcome.record) {
        job.resume.hidden = false;
        return null;
      }
      if (job.kind === "ingest") {
        await loadDocuments(job, 0);
        hooks.ingestEnded();
      }
      trimJobs();
      return outcome.record;
    }
  })();
  return job.done;
}

/** While an ingest job runs, its first page of outcomes follows its progress (unless the user paged on). */
async function refreshDocuments(job, record) {
  if (job.kind !== "ingest" || !record) return;
  const done = Number((record.progress || {}).done) || 0;
  if (done > (job.shownDone || 0) && job.docRows.children.length <= DOC_PAGE) {
    job.shownDone = done;
    await loadDocuments(job, 0);
  }
}

function documentRow(item) {
  return el("tr", { class: "doc" },
    el("td", {},
      el("span", { class: "doc-id" }, String(item.doc_id)),
      item.reason ? el("span", { class: "reason" }, String(item.reason)) : null),
    el("td", {}, el("span", { class: stateClass(item.status) }, String(item.status))),
    el("td", { class: "num" }, item.chunks === undefined || item.chunks === null ? "" : String(item.chunks)));
}

async function loadDocuments(job, offset) {
  try {
    const page = await api("GET", `${API}/jobs/${job.id}/documents?offset=${offset}&limit=${DOC_PAGE}`);
    if (offset === 0) job.docRows.replaceChildren();
    job.docRows.append(...page.items.map(documentRow));
    job.docSummary.textContent = `Documents (${page.total})`;
    job.nextOffset = page.next_offset;
    job.more.hidden = page.next_offset === null || page.next_offset === undefined;
    job.docs.hidden = page.total === 0;
  } catch (err) {
    report(job.problem, err);
  }
}

async function cancelJob(job) {
  try {
    render(job, await api("DELETE", `${API}/jobs/${job.id}`));
  } catch (err) {
    report(job.problem, err);
  }
}

async function retryJob(job) {
  try {
    const accepted = await api("POST", `${API}/jobs/${job.id}/retry`);
    addJob(accepted.job_id, "ingest", `retry of ${job.id.slice(0, 8)}`);
  } catch (err) {
    report(job.problem, err);
  }
}
