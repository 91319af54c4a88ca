// Shared by the page's modules: DOM building, the API client and problem display.
// Every string from the server goes into the page as text (text nodes / textContent), never as HTML.

export const API = "/api/v1";
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const STATES = new Set(["queued", "running", "succeeded", "failed", "cancelled", "skipped"]);

export const $ = (id) => document.getElementById(id);
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- DOM helpers -------------------------------------------------------------------------------

/** An element; string children become text nodes (append never parses markup). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("aria-") || name.startsWith("data-") || name === "role") {
      node.setAttribute(name, value);
    } else node[name] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function stateClass(state) {
  return `state state-${STATES.has(state) ? state : "other"}`;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function formatScore(value) {
  if (typeof value !== "number") return "—";
  return Math.abs(value) >= 100 ? value.toFixed(1) : value.toFixed(4);
}

// ---- settings ----------------------------------------------------------------------------------

export function remember(name, value) {
  try {
    if (value) localStorage.setItem(name, value);
    else localStorage.removeItem(name);
  } catch {
    /* storage disabled: the page still works for this visit */
  }
}

export function recall(name) {
  try {
    return localStorage.getItem(name) || "";
  } catch {
    return "";
  }
}

export const apiKey = () => $("api-key").value.trim();
export const collectionName = () => $("collection").value.trim();

// ---- API calls and problems --------------------------------------------------------------------

export class ApiError extends Error {
  constructor(problem) {
    super(problem.title);
    this.problem = problem;
  }
}

/** The RFC 9457 problem in a response, or one made up from what came back. */
export function toProblem(status, statusText, body, text) {
  if (body && typeof body === "object" && (body.title || body.detail)) {
    return {
      status,
      title: String(body.title || `HTTP ${status}`),
      detail: String(body.detail || ""),
      errors: Array.isArray(body.errors) ? body.errors : [],
    };
  }
  return { status, title: `HTTP ${status} ${statusText || ""}`.trim(), detail: (text || "").slice(0, 300), errors: [] };
}

export function networkProblem(what) {
  return {
    status: 0,
    title: "The service did not answer",
    detail: `${what} failed: check that Quarry is running and reachable.`,
    errors: [],
  };
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json, application/problem+json", ...authHeaders() };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  let text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } catch {
    throw new ApiError(networkProblem(`${method} ${path}`));
  }
  const data = parsedJson(text);
  if (!response.ok) throw new ApiError(httpProblem(response, data, text));
  return data;
}

function parsedJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null; // not JSON: shown as text
  }
}

/** The problem a non-2xx answer carries, with when to try again. */
function httpProblem(response, data, text) {
  const problem = toProblem(response.status, response.statusText, data, text);
  problem.retryAfter = Number(response.headers.get("Retry-After")) || 0;
  return problem;
}

/** The server cannot stream (an older server, or a proxy that buffers): follow by long-poll instead. */
export class NoStream extends Error {}

/** Read one Server-Sent Events response (fetch, so the API key goes in a header, which EventSource
 * cannot send). Calls onEvent({name, data, id}) per event; resolves to {lastId, retryMs} when the server
 * closes the stream. Non-2xx answers throw ApiError like api(). */
export async function streamEvents(path, lastId, onEvent) {
  const headers = { Accept: "text/event-stream, application/problem+json", ...authHeaders() };
  if (lastId) headers["Last-Event-ID"] = lastId;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch {
    throw new ApiError(networkProblem(`GET ${path}`));
  }
  const type = response.headers.get("Content-Type") || "";
  if (!response.ok) {
    if (response.status === 404 && !type.includes("problem")) throw new NoStream();
    const text = await response.text();
    throw new ApiError(httpProblem(response, parsedJson(text), text));
  }
  if (!type.startsWith("text/event-stream") || !response.body) throw new NoStream();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const state = { lastId, retryMs: 1000, name: "", data: [], rest: "" };
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch {
      return state; // the connection broke: resume from the last id
    }
    if (chunk.done) return state;
    const lines = (state.rest + chunk.value).split(/\r\n|\r|\n/);
    state.rest = lines.pop();
    for (const line of lines) sseLine(state, line, onEvent);
  }
}

function sseLine(state, line, onEvent) {
  if (line === "") {
    if (state.data.length) onEvent({ name: state.name || "message", data: state.data.join("\n"), id: state.lastId });
    state.name = "";
    state.data = [];
    return;
  }
  if (line.startsWith(":")) return; // the server's heartbeat
  const at = line.indexOf(":");
  const field = at < 0 ? line : line.slice(0, at);
  let value = at < 0 ? "" : line.slice(at + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (field === "event") state.name = value;
  else if (field === "data") state.data.push(value);
  else if (field === "id" && !value.includes("\0")) state.lastId = value;
  else if (field === "retry" && /^\d+$/.test(value)) state.retryMs = Number(value);
}

export function showProblem(box, problem) {
  const heading = problem.status ? `${problem.title} (${problem.status})` : problem.title;
  box.replaceChildren(el("strong", { class: "problem-title" }, heading));
  if (problem.detail) box.append(el("p", { class: "problem-detail" }, problem.detail));
  if (problem.errors && problem.errors.length) {
    const items = problem.errors.slice(0, 20).map((item) => {
      const text = item && typeof item === "object" ? `${item.loc || "request"}: ${item.msg || JSON.stringify(item)}` : String(item);
      return el("li", {}, text);
    });
    box.append(el("ul", {}, ...items));
  }
  box.hidden = false;
}

export function report(box, err) {
  const problem = err instanceof ApiError ? err.problem : { status: 0, title: "Error in the page", detail: String(err), errors: [] };
  showProblem(box, problem);
}

export function clearProblem(box) {
  box.hidden = true;
  box.replaceChildren();
}
