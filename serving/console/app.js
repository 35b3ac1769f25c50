// The officeray console: tasks (a live list), one task (plan DAG, timeline, events, result, subtask
// tree, review by a person, workspace artifacts) and the system (components, heartbeats, message rates,
// DLQ, approvals, reviews). Plain JavaScript and SVG, no build
// step, nothing loaded from elsewhere. The API key lives in this tab's sessionStorage and goes out as
// `Authorization: Bearer` on every call; server-sent events are read with fetch() (EventSource
// cannot send that header) and parsed here (parseSse).
"use strict";

(() => {
  const KEY_STORAGE = "officeray.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TASK_LIST_LIMIT = 200;
  const TASK_LIST_KEPT = 1000;
  const SYSTEM_REFRESH_MS = 3000;
  const QUEUES_REFRESH_MS = 5000;
  const TASK_REFRESH_DEBOUNCE_MS = 300;
  const DECIDED_REFRESH_MS = 800;
  const MAX_REVIEW_FEEDBACK_CHARS = 2000; // officeray.review.MAX_REVIEW_FEEDBACK_CHARS
  const SUBTASK_INDENT_PX = 22;
  const SUBTASK_MAX_DEPTH = 8;
  const DOWNLOAD_URL_KEEP_MS = 60000;
  const RECONNECT_MIN_MS = 1000;
  const RECONNECT_MAX_MS = 10000;
  const FINAL_STATUSES = new Set(["completed", "failed", "cancelled"]);
  const LANE_ORDER = ["gateway", "orchestrator", "planner", "validator", "runner", "reviewer", "ai_tool", "webhooks"];
  // Spans reach the trace store a moment after they end: the trace is read again after the end.
  const TRACE_LATE_REFRESH_MS = [1000, 3000, 6000, 12000];

  const state = {
    key: null,
    tasks: new Map(), // task_id -> summary
    filters: { status: "", tenant: "", search: "" },
    feed: null, // AbortController of the live event feed
    pending: new Map(), // task_id -> timer of a summary refresh
    view: null,
    task: null, // the task view's state
    timers: [],
  };

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers ---------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function tooltip(text) {
    return svg("title", { text });
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function showBanner(message, kind = "error") {
    const banner = $("banner");
    banner.textContent = message;
    banner.dataset.kind = kind;
    banner.hidden = !message;
  }

  // -- time and numbers ----------------------------------------------------------------------------

  function parseTime(value) {
    return value ? new Date(value).getTime() : null;
  }

  function formatDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d`;
  }

  function formatClock(value) {
    const t = parseTime(value);
    return t === null ? "" : new Date(t).toLocaleTimeString();
  }

  function formatBytes(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "";
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  }

  function shortText(value, limit) {
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    if (text === undefined) return "";
    return text.length > limit ? `${text.slice(0, limit)}…` : text;
  }

  // -- the API -------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail, code) {
      super((typeof detail === "string" ? detail : detail && JSON.stringify(detail)) || `HTTP ${status}`);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(extra) {
    return { Authorization: `Bearer ${state.key}`, ...(extra || {}) };
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", headers: authHeaders(options.headers), cache: "no-store" };
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(path, init);
    let body = null;
    const text = await response.text();
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = { detail: text };
      }
    }
    if (!response.ok) {
      if (response.status === 401 && !options.signingIn) signOut("The API key was refused: sign in again.");
      throw new ApiError(response.status, body && body.detail, body && body.code);
    }
    return body;
  }

  // A file of the API as a Blob (the Authorization header rules out a plain link); refusals as ApiError.
  async function apiBlob(path) {
    const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
    if (!response.ok) {
      let body = null;
      try {
        body = JSON.parse(await response.text());
      } catch (_) {
        body = null;
      }
      if (response.status === 401) signOut("The API key was refused: sign in again.");
      throw new ApiError(response.status, body && body.detail, body && body.code);
    }
    return response.blob();
  }

  // What a refused call says, with its HTTP status and code (a 403 or a 409 reads differently).
  function describeRefusal(error) {
    if (!(error instanceof ApiError)) return `Failed: ${error.message}`;
    const label = { 400: "Refused", 403: "Not allowed", 404: "Not found", 409: "Already decided",
      422: "Invalid" }[error.status] || "Refused";
    return `${label} (HTTP ${error.status}${error.code ? ` ${error.code}` : ""}): ${error.message}`;
  }

  // -- server-sent events over fetch() -------------------------------------------------------------

  // A parser of the text/event-stream format (WHATWG HTML, "server-sent events"): push() takes the
  // text as it arrives, in chunks cut anywhere; onMessage gets {id, event, data} per dispatched event.
  // lastEventId is kept across events, as EventSource does.
  function createSseParser(onMessage) {
    let buffer = "";
    let data = [];
    let eventType = "";
    let lastEventId = "";
    let sawData = false;
    const parser = {
      retry: null,
      get lastEventId() {
        return lastEventId;
      },
      push(chunk) {
        buffer += chunk;
        let match;
        // a line ends with CRLF, LF or CR (a CR at the end of the buffer may be the start of CRLF)
        while ((match = /\r\n|\n|\r(?!$)/.exec(buffer)) !== null) {
          const line = buffer.slice(0, match.index);
          buffer = buffer.slice(match.index + match[0].length);
          processLine(line);
        }
      },
    };
    function processLine(line) {
      if (line === "") {
        if (sawData) {
          onMessage({ id: lastEventId, event: eventType || "message", data: data.join("\n") });
        }
        data = [];
        eventType = "";
        sawData = false;
        return;
      }
      if (line.startsWith(":")) return; // a comment (heartbeat)
      const colon = line.indexOf(":");
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") {
        data.push(value);
        sawData = true;
      } else if (field === "event") eventType = value;
      else if (field === "id" && !value.includes("\0")) lastEventId = value;
      else if (field === "retry" && /^\d+$/.test(value)) parser.retry = Number(value);
    }
    return parser;
  }

  // Reads one stream to its end (or until signal aborts); resolves with the parser (its last id).
  async function readStream(path, { lastEventId, signal, onMessage, onOpen }) {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await fetch(path, { headers, signal, cache: "no-store" });
    if (!response.ok) {
      if (response.status === 401) signOut("The API key was refused: sign in again.");
      throw new ApiError(response.status, `stream ${path}: HTTP ${response.status}`);
    }
    if (onOpen) onOpen();
    const parser = createSseParser(onMessage);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    return parser;
  }

  // Follows a stream that may drop: reconnects with Last-Event-ID (from the last message), backing
  // off, until aborted or until `finished()` says the stream has nothing more to give.
  async function follow(path, { signal, onMessage, onState, finished }) {
    let lastEventId = "";
    let wait = RECONNECT_MIN_MS;
    while (!signal.aborted) {
      try {
        const parser = await readStream(path, {
          lastEventId,
          signal,
          onOpen: () => {
            wait = RECONNECT_MIN_MS;
            if (onState) onState("live");
          },
          onMessage: (message) => {
            lastEventId = message.id || lastEventId;
            onMessage(message);
          },
        });
        if (parser.retry !== null) wait = parser.retry;
        if (finished && finished()) return;
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
          if (onState) onState("off");
          return; // refused: reconnecting does not help
        }
      }
      if (onState) onState("reconnecting");
      await sleep(wait, signal);
      wait = Math.min(wait * 2, RECONNECT_MAX_MS);
    }
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  function setLive(mode) {
    const live = $("live");
    live.dataset.state = mode;
    live.textContent = { live: "live", reconnecting: "reconnecting…", off: "offline" }[mode] || mode;
  }

  // -- signing in ----------------------------------------------------------------------------------

  async function signIn(key) {
    state.key = key;
    try {
      await api("/v1/tasks?limit=1", { signingIn: true });
    } catch (error) {
      state.key = null;
      throw error;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    stopFeed();
    leaveView();
    state.tasks.clear();
    $("signin-error").hidden = !message;
    $("signin-error").textContent = message || "";
    render();
  }

  // -- the live feed of every task's events -------------------------------------------------------

  function startFeed() {
    stopFeed();
    const controller = new AbortController();
    state.feed = controller;
    follow("/v1/events", {
      signal: controller.signal,
      onState: setLive,
      onMessage: (message) => {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        onFeedEvent(event);
      },
    });
  }

  function stopFeed() {
    if (state.feed) state.feed.abort();
    state.feed = null;
    setLive("off");
  }

  // The feed holds each event a moment before sending it (serving/events.py), so a summary read
  // meanwhile may be newer than the event: only a newer event changes the row at once.
  function onFeedEvent(event) {
    const known = state.tasks.get(event.task_id);
    if (known && event.data && typeof event.data.status === "string" && isNewer(event.at, known.updated_at)) {
      known.status = event.data.status;
      known.updated_at = event.at;
      renderTaskRow(known);
    }
    scheduleTaskRefresh(event.task_id);
    if (state.task && state.task.id === event.task_id && !state.task.stream) {
      // a retried task's own stream had ended: follow it again
      followTask(state.task);
    }
  }

  function scheduleTaskRefresh(taskId) {
    if (state.pending.has(taskId)) return;
    state.pending.set(taskId, setTimeout(() => {
      state.pending.delete(taskId);
      refreshTask(taskId);
    }, TASK_REFRESH_DEBOUNCE_MS));
  }

  async function refreshTask(taskId) {
    try {
      const record = await api(`/v1/tasks/${encodeURIComponent(taskId)}`);
      const summary = summaryOf(record);
      const known = state.tasks.get(taskId);
      if (known && !isNewer(summary.updated_at, known.updated_at) && known.status !== summary.status) {
        return; // an answer that was overtaken by a newer one
      }
      state.tasks.set(taskId, summary);
      forgetOldTasks();
      renderTaskRow(summary);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404) console.warn(error);
    }
  }

  // New tasks keep coming from the feed: the list keeps the newest TASK_LIST_KEPT.
  function forgetOldTasks() {
    if (state.tasks.size <= TASK_LIST_KEPT) return;
    const newest = [...state.tasks.values()].sort((a, b) => parseTime(b.created_at) - parseTime(a.created_at));
    for (const task of newest.slice(TASK_LIST_KEPT)) state.tasks.delete(task.task_id);
    if (state.view === "tasks") renderTasks();
  }

  function isNewer(at, than) {
    const a = parseTime(at);
    const b = parseTime(than);
    return a === null || b === null || a >= b;
  }

  function summaryOf(record) {
    const usage = record.usage || {};
    return {
      task_id: record.task_id,
      tenant: record.tenant,
      status: record.status,
      description: record.description,
      created_at: record.created_at,
      updated_at: record.updated_at,
      finished_at: record.finished_at,
      tokens: (usage.prompt_tokens || 0) + (usage.completion_tokens || 0),
    };
  }

  // -- tasks view ----------------------------------------------------------------------------------

  async function loadTasks() {
    const params = new URLSearchParams({ limit: String(TASK_LIST_LIMIT) });
    if (state.filters.status) params.set("status", state.filters.status);
    const tenant = state.filters.tenant.trim();
    try {
      let body;
      try {
        body = await api(`/v1/tasks?${params}${tenant ? `&tenant=${encodeURIComponent(tenant)}` : ""}`);
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 403 || !tenant) throw error;
        body = await api(`/v1/tasks?${params}`); // a key of one tenant: filter here
      }
      state.tasks.clear();
      for (const task of body.tasks) state.tasks.set(task.task_id, task);
      showBanner("");
    } catch (error) {
      showBanner(`Could not load the tasks: ${error.message}`);
    }
    renderTasks();
  }

  function matches(task) {
    const { status, tenant, search } = state.filters;
    if (status && task.status !== status) return false;
    if (tenant.trim() && task.tenant !== tenant.trim()) return false;
    const needle = search.trim().toLowerCase();
    if (needle && !`${task.task_id} ${task.description}`.toLowerCase().includes(needle)) return false;
    return true;
  }

  function sortedTasks() {
    return [...state.tasks.values()]
      .filter(matches)
      .sort((a, b) => (parseTime(b.created_at) - parseTime(a.created_at)) || (a.task_id < b.task_id ? 1 : -1));
  }

  function renderTasks() {
    const body = $("tasks-table").tBodies[0];
    clear(body);
    const tasks = sortedTasks();
    for (const task of tasks) body.append(taskRow(task));
    $("tasks-empty").hidden = tasks.length > 0;
    $("tasks-count").textContent = `${tasks.length} shown`;
  }

  function taskRow(task) {
    const row = el("tr", { "data-task-id": task.task_id, "data-status": task.status });
    row.append(
      el("td", { class: "mono" }, el("a", { href: `#/task/${encodeURIComponent(task.task_id)}`, text: task.task_id })),
      el("td", { class: "desc", text: task.description, title: task.description }),
      el("td", {}, statusBadge(task.status)),
      el("td", { class: "tenant", text: task.tenant }),
      el("td", { class: "age", text: ageOf(task) }),
      el("td", { class: "duration", text: durationOf(task) }),
      el("td", { class: "num tokens", text: String(task.tokens || 0) }),
    );
    return row;
  }

  function renderTaskRow(task) {
    if (state.view !== "tasks") return;
    const body = $("tasks-table").tBodies[0];
    const existing = body.querySelector(`tr[data-task-id="${CSS.escape(task.task_id)}"]`);
    if (!matches(task)) {
      if (existing) existing.remove();
      return;
    }
    if (existing) existing.replaceWith(taskRow(task));
    else renderTasks(); // a new task: in its place
  }

  function tickTasks() {
    if (state.view !== "tasks") return;
    for (const row of $("tasks-table").tBodies[0].rows) {
      const task = state.tasks.get(row.dataset.taskId);
      if (!task) continue;
      row.querySelector(".age").textContent = ageOf(task);
      row.querySelector(".duration").textContent = durationOf(task);
    }
  }

  function ageOf(task) {
    return formatDuration(Date.now() - parseTime(task.created_at));
  }

  function durationOf(task) {
    const start = parseTime(task.created_at);
    const end = parseTime(task.finished_at) || (FINAL_STATUSES.has(task.status) ? parseTime(task.updated_at) : Date.now());
    return formatDuration(end - start);
  }

  function statusBadge(status) {
    return el("span", { class: `status status-${status}`, text: status });
  }

  // -- one task ------------------------------------------------------------------------------------

  function openTask(taskId) {
    const view = { id: taskId, record: null, spans: [], events: [], seen: new Set(), controller: new AbortController(),
      stream: null, refresh: null, late: [], asked: 0, shown: 0 };
    state.task = view;
    $("task-title").textContent = taskId;
    $("task-status").replaceChildren();
    $("task-meta").textContent = "";
    $("task-description").textContent = "";
    $("task-result").textContent = "";
    clear($("task-events"));
    clear($("task-approvals"));
    clear($("task-review"));
    clear($("task-subtasks"));
    $("subtasks-box").hidden = true;
    $("task-parent").hidden = true;
    clear($("task-parent"));
    clear($("artifacts-table").tBodies[0]);
    $("artifacts-total").textContent = "";
    $("artifacts-empty").hidden = false;
    $("artifacts-empty").textContent = "No files in the task's workspace.";
    $("timeline").replaceChildren(el("p", { class: "muted", text: "No spans yet." }));
    $("plan").replaceChildren(el("p", { class: "muted", text: "No plan yet." }));
    refreshTaskView(view);
    followTask(view);
  }

  function closeTask() {
    const view = state.task;
    if (!view) return;
    view.controller.abort();
    clearTimeout(view.refresh);
    view.late.forEach(clearTimeout);
    state.task = null;
  }

  function followTask(view) {
    view.stream = follow(`/v1/tasks/${encodeURIComponent(view.id)}/events`, {
      signal: view.controller.signal,
      finished: () => true, // the task's stream ends after its final state: nothing to resume
      onMessage: (message) => {
        let event;
        try {
          event = JSON.parse(message.data);
        } catch (_) {
          return;
        }
        addTaskEvent(view, event);
        scheduleTaskViewRefresh(view);
      },
    }).finally(() => {
      if (state.task !== view) return;
      view.stream = null;
      refreshTaskView(view);
      view.late = TRACE_LATE_REFRESH_MS.map((ms) => setTimeout(() => refreshTaskView(view), ms));
    });
  }

  function scheduleTaskViewRefresh(view) {
    if (view.refresh) return;
    view.refresh = setTimeout(() => {
      view.refresh = null;
      refreshTaskView(view);
    }, TASK_REFRESH_DEBOUNCE_MS);
  }

  async function refreshTaskView(view) {
    const path = `/v1/tasks/${encodeURIComponent(view.id)}`;
    view.asked += 1;
    const asked = view.asked;
    try {
      const [record, trace] = await Promise.all([api(path), api(`${path}/trace`)]);
      if (state.task !== view || asked < view.shown) return; // a later read was shown already
      view.shown = asked;
      view.record = record;
      view.spans = trace.spans || [];
      for (const event of trace.events || []) addTaskEvent(view, event);
      renderTaskView(view);
      showBanner("");
      refreshArtifacts(view, asked);
    } catch (error) {
      if (state.task !== view) return;
      showBanner(error.status === 404 ? `No task ${view.id}.` : `Could not load the task: ${error.message}`);
    }
  }

  function addTaskEvent(view, event) {
    const key = event.id !== null && event.id !== undefined ? `id:${event.id}` : `${event.kind}@${event.at}`;
    if (view.seen.has(key)) return;
    view.seen.add(key);
    view.events.push(event);
    view.events.sort((a, b) => (a.id || 0) - (b.id || 0));
    renderTaskEvents(view);
  }

  function renderTaskView(view) {
    const record = view.record;
    if (!record) return;
    $("task-status").replaceChildren(statusBadge(record.status));
    const tokens = (record.usage.prompt_tokens || 0) + (record.usage.completion_tokens || 0);
    $("task-meta").textContent = `tenant ${record.tenant} · ${tokens} tokens · iteration ${record.iterations} · `
      + `${durationOf(summaryOf(record))}`;
    $("task-description").textContent = record.description;
    const result = $("task-result");
    result.classList.toggle("error", Boolean(record.error));
    if (record.error) result.textContent = record.error;
    else if (record.result !== null && record.result !== undefined) result.textContent = JSON.stringify(record.result, null, 2);
    else if (record.status === "waiting_review") result.textContent = "(waiting for a person's review: see above)";
    else result.textContent = FINAL_STATUSES.has(record.status) ? "(no result)" : "(running)";
    renderTaskApprovals(view);
    renderTaskParent(record);
    renderTaskReview(view);
    renderSubtasks(record);
    drawTimeline($("timeline"), view.spans);
    drawPlan($("plan"), record);
  }

  function renderTaskEvents(view) {
    const list = $("task-events");
    clear(list);
    for (const event of view.events) {
      const described = describeEvent(event);
      if (described) {
        list.append(described);
        continue;
      }
      const data = { ...(event.data || {}) };
      delete data.status;
      const details = Object.keys(data).length ? JSON.stringify(data) : "";
      list.append(el("li", { "data-kind": event.kind },
        el("time", { text: formatClock(event.at) }),
        el("span", { class: "kind", text: event.kind }),
        event.data && event.data.status ? statusBadge(event.data.status) : null,
        el("span", { class: "muted details", text: details, title: details })));
    }
  }

  function taskLink(taskId, text) {
    return el("a", { href: `#/task/${encodeURIComponent(taskId)}`, class: "mono", text: text || taskId });
  }

  // The events a person reads in full: the gatekeeper's verdict and reason, subtasks, reviews.
  function describeEvent(event) {
    const d = event.data || {};
    const head = () => [el("time", { text: formatClock(event.at) }), el("span", { class: "kind", text: event.kind })];
    const row = (attrs, ...rest) => el("li", { "data-kind": event.kind, class: "described", ...attrs }, ...head(), ...rest);
    if (event.kind === "gatekeeper") {
      const verdict = String(d.verdict || "");
      const what = `step ${d.step_id || "?"} (${d.action || "?"})${d.risk ? ` · risk ${d.risk}` : ""}`;
      return row({ "data-verdict": verdict, "data-step": d.step_id },
        el("span", { class: `verdict verdict-${verdict}`, text: verdict }),
        el("span", { class: "gate" }, el("span", { class: "gate-step", text: what }),
          el("span", { class: "gate-reason", text: d.reason || "" })));
    }
    if (event.kind === "review_escalated") {
      return row({}, statusBadge("waiting_review"),
        el("span", { class: "gate-reason", text: `iteration ${d.iteration}: ${d.reason || ""}` }));
    }
    if (event.kind === "review_decided") {
      const said = d.feedback ? `: ${d.feedback}` : "";
      return row({ "data-decision": d.decision },
        el("span", { class: `verdict decision-${d.decision}`, text: d.decision }),
        el("span", { class: "gate-reason", text: `by ${d.decided_by}${said}` }));
    }
    if ((event.kind === "subtask_started" || event.kind === "subtask_finished") && d.task_id) {
      return row({ "data-subtask": d.subtask_id },
        d.subtask_status ? statusBadge(d.subtask_status) : null,
        el("span", {}, `subtask ${d.subtask_id} `, taskLink(d.task_id)));
    }
    if (event.kind === "decomposed" && Array.isArray(d.subtasks)) {
      const parts = d.subtasks.map((s) => s.subtask_id + (s.dependencies && s.dependencies.length
        ? ` (after ${s.dependencies.join(", ")})` : ""));
      return row({}, el("span", { class: "gate-reason", text: `${d.subtasks.length} subtasks: ${parts.join(", ")}` }));
    }
    return null;
  }

  // -- subtasks: the tree of a decomposed task, the parent of a child -----------------------------

  function renderTaskParent(record) {
    const box = $("task-parent");
    if (!record.parent_id) {
      box.hidden = true;
      clear(box);
      return;
    }
    box.replaceChildren("subtask of ", taskLink(record.parent_id));
    box.hidden = false;
  }

  // Depth of each subtask in its DAG (0: no dependency): the tree is drawn indented by it.
  function subtaskDepths(subtasks) {
    const byId = new Map(subtasks.map((s) => [s.subtask_id, s]));
    const depth = new Map();
    const depthOf = (id, seen) => {
      if (depth.has(id)) return depth.get(id);
      if (seen.has(id) || !byId.has(id)) return 0;
      seen.add(id);
      const deps = (byId.get(id).dependencies || []).filter((dep) => byId.has(dep));
      const d = deps.length ? 1 + Math.max(...deps.map((dep) => depthOf(dep, seen))) : 0;
      depth.set(id, d);
      return d;
    };
    for (const s of subtasks) depthOf(s.subtask_id, new Set());
    return depth;
  }

  function renderSubtasks(record) {
    const subtasks = record.subtasks || [];
    const list = $("task-subtasks");
    $("subtasks-box").hidden = subtasks.length === 0;
    clear(list);
    if (!subtasks.length) return;
    const depth = subtaskDepths(subtasks);
    const done = subtasks.filter((s) => s.status === "completed").length;
    $("subtasks-count").textContent = `(${done} of ${subtasks.length} completed)`;
    for (const subtask of subtasks) {
      const level = Math.min(depth.get(subtask.subtask_id) || 0, SUBTASK_MAX_DEPTH);
      const took = subtask.started_at
        ? formatDuration((parseTime(subtask.finished_at) || Date.now()) - parseTime(subtask.started_at)) : "";
      const item = el("li", { class: "subtask", "data-subtask": subtask.subtask_id, "data-status": subtask.status,
        "data-depth": level },
        el("div", { class: "subtask-head" },
          statusBadge(subtask.status),
          el("span", { class: "subtask-id mono", text: subtask.subtask_id }),
          taskLink(subtask.task_id, "open"),
          subtask.dependencies && subtask.dependencies.length
            ? el("span", { class: "muted", text: `after ${subtask.dependencies.join(", ")}` }) : null,
          took ? el("span", { class: "muted", text: took }) : null),
        el("div", { class: "subtask-desc", text: subtask.description, title: subtask.description }),
        subtask.error ? el("div", { class: "error subtask-error", text: subtask.error }) : null);
      item.style.marginLeft = `${level * SUBTASK_INDENT_PX}px`; // CSSOM: allowed by the page's policy
      list.append(item);
    }
  }

  // -- a result that waits for a person's review ---------------------------------------------------

  // The panel is kept across refreshes of the same round (the feedback typed and the outcome stay);
  // it goes when the task no longer waits.
  function renderTaskReview(view) {
    const box = $("task-review");
    const record = view.record;
    const pending = record.status === "waiting_review" ? record.review_pending : null;
    if (!pending) {
      clear(box);
      return;
    }
    const round = `${record.task_id}#${pending.iteration}`;
    const shown = box.firstElementChild;
    if (shown && shown.dataset.round === round) {
      const left = shown.querySelector(".review-timeout");
      if (left) left.textContent = reviewTimeLeft(pending);
      return;
    }
    box.replaceChildren(reviewPanel(view, record.task_id, pending, round));
  }

  function reviewTimeLeft(pending) {
    const since = parseTime(pending.since);
    if (since === null || !pending.timeout_s) return "";
    const left = since + pending.timeout_s * 1000 - Date.now();
    return left > 0 ? `times out in ${formatDuration(left)}` : "timed out";
  }

  function reviewPanel(view, taskId, pending, round) {
    const feedback = el("textarea", { class: "feedback", rows: 3, maxlength: MAX_REVIEW_FEEDBACK_CHARS,
      placeholder: "feedback (required to send back; optional otherwise)" });
    const outcome = el("span", { class: "outcome" });
    const accept = el("button", { type: "button", class: "accept", text: "Accept" });
    const reject = el("button", { type: "button", class: "reject danger", text: "Reject" });
    const revise = el("button", { type: "button", class: "revise secondary", text: "Send back" });
    const buttons = [accept, reject, revise];
    const decide = async (decision) => {
      const said = feedback.value.trim();
      if (decision === "revise" && !said) {
        outcome.textContent = "Write the feedback for the next round before sending it back.";
        outcome.className = "outcome error";
        feedback.focus();
        return;
      }
      buttons.forEach((b) => { b.disabled = true; });
      outcome.textContent = "";
      outcome.className = "outcome";
      try {
        const answer = await api(`/v1/tasks/${encodeURIComponent(taskId)}/review`,
          { method: "POST", body: { decision, feedback: said } });
        outcome.textContent = `${answer.decision} by ${answer.decided_by}`;
        outcome.className = "outcome ok";
        setTimeout(() => {
          if (state.task === view) refreshTaskView(view);
        }, DECIDED_REFRESH_MS);
      } catch (error) {
        outcome.textContent = describeRefusal(error);
        outcome.className = "outcome error";
        outcome.dataset.status = String(error.status || "");
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    accept.addEventListener("click", () => decide("accept"));
    reject.addEventListener("click", () => decide("reject"));
    revise.addEventListener("click", () => decide("revise"));
    const proposed = pending.proposed_output === null || pending.proposed_output === undefined
      ? "(no output)" : JSON.stringify(pending.proposed_output, null, 2);
    return el("div", { class: "review", "data-round": round, "data-iteration": pending.iteration },
      el("div", { class: "review-head" },
        el("strong", { text: `Iteration ${pending.iteration} waits for a person's review` }),
        el("span", { class: "muted", text: pending.since ? `since ${formatClock(pending.since)}` : "" }),
        el("span", { class: "muted review-timeout", text: reviewTimeLeft(pending) })),
      el("div", { class: "review-label", text: "Why" }),
      el("p", { class: "review-reason", text: pending.reason || "(no reason given)" }),
      el("div", { class: "review-label", text: "Proposed result" }),
      el("pre", { class: "result review-output", text: proposed }),
      feedback,
      el("div", { class: "decision" }, accept, reject, revise, outcome));
  }

  // -- artifacts: the files of the task's workspace -----------------------------------------------

  function artifactPath(taskId, path) {
    return `/v1/tasks/${encodeURIComponent(taskId)}/artifacts/${path.split("/").map(encodeURIComponent).join("/")}`;
  }

  async function refreshArtifacts(view, asked) {
    const body = $("artifacts-table").tBodies[0];
    const empty = $("artifacts-empty");
    try {
      const answer = await api(`/v1/tasks/${encodeURIComponent(view.id)}/artifacts`);
      if (state.task !== view || asked < view.shown) return;
      const files = answer.files || [];
      const shown = [...body.rows].map((r) => `${r.dataset.path}@${r.dataset.sha256}`).join("|");
      if (shown === files.map((f) => `${f.path}@${f.sha256}`).join("|") && files.length) return; // unchanged
      clear(body);
      for (const file of files) body.append(artifactRow(view.id, file));
      $("artifacts-total").textContent = files.length ? `(${files.length} · ${formatBytes(answer.total_bytes)})` : "";
      empty.textContent = "No files in the task's workspace.";
      empty.classList.remove("error");
      empty.hidden = files.length > 0;
    } catch (error) {
      if (state.task !== view) return;
      empty.textContent = `Could not list the artifacts: ${describeRefusal(error)}`;
      empty.classList.add("error");
      empty.hidden = false;
    }
  }

  function artifactRow(taskId, file) {
    const outcome = el("span", { class: "outcome" });
    const href = artifactPath(taskId, file.path);
    const name = file.path.split("/").pop();
    const link = el("a", { href, class: "download", download: name, text: "download",
      title: `sha256 ${file.sha256}` });
    link.addEventListener("click", async (event) => {
      event.preventDefault(); // the API needs the key: fetched, then saved from a blob URL
      outcome.textContent = "";
      outcome.className = "outcome";
      try {
        const blob = await apiBlob(href);
        const url = URL.createObjectURL(blob);
        const save = el("a", { href: url, download: name, hidden: true });
        document.body.append(save);
        save.click();
        save.remove();
        setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_KEEP_MS);
      } catch (error) {
        outcome.textContent = describeRefusal(error);
        outcome.className = "outcome error";
      }
    });
    return el("tr", { "data-path": file.path, "data-sha256": file.sha256 },
      el("td", { class: "mono path", text: file.path, title: file.path }),
      el("td", { class: "num size", text: formatBytes(file.size), title: `${file.size} bytes` }),
      el("td", { class: "mono", text: file.step_id || "" }),
      el("td", { class: "age", text: formatClock(file.updated_at) }),
      el("td", {}, link, outcome));
  }

  function renderTaskApprovals(view) {
    const box = $("task-approvals");
    clear(box);
    for (const step of view.record.steps || []) {
      if (step.status !== "waiting_approval") continue;
      box.append(el("div", { class: "approval" },
        el("span", { text: `Step ${step.step_id} (${step.action}) waits for approval` }),
        ...decisionControls(view.record.task_id, step.step_id, () => refreshTaskView(view))));
    }
  }

  // -- the timeline (one lane per component, a bar per span, arrows between lanes) ----------------

  function laneRank(lane) {
    const base = lane.split(":")[0];
    const index = LANE_ORDER.indexOf(base);
    return index === -1 ? LANE_ORDER.length : index;
  }

  function sortLanes(lanes) {
    return [...lanes].sort((a, b) => laneRank(a) - laneRank(b) || (a < b ? -1 : a > b ? 1 : 0));
  }

  // Spans of one lane in rows so that bars in a row do not overlap (the first row that is free).
  function packRows(spans) {
    const rowEnds = [];
    const rowOf = new Map();
    for (const span of [...spans].sort((a, b) => a.start_ns - b.start_ns)) {
      let row = rowEnds.findIndex((end) => end <= span.start_ns);
      if (row === -1) {
        row = rowEnds.length;
        rowEnds.push(0);
      }
      rowEnds[row] = span.end_ns;
      rowOf.set(span.span_id, row);
    }
    return { rows: Math.max(1, rowEnds.length), rowOf };
  }

  function spanTooltip(span) {
    const lines = [`${span.name} (${span.lane})`, `${formatDuration(span.duration_ms)} · status ${span.status}`];
    if (span.status_message) lines.push(span.status_message);
    for (const [key, value] of Object.entries(span.attributes || {})) {
      const text = typeof value === "string" ? value : JSON.stringify(value);
      lines.push(`${key}: ${text.length > 300 ? `${text.slice(0, 300)}…` : text}`);
    }
    for (const event of span.events || []) lines.push(`event ${event.name}`);
    return lines.join("\n");
  }

  function drawTimeline(container, spans) {
    if (!spans.length) {
      container.replaceChildren(el("p", { class: "muted", text: "No spans yet." }));
      return;
    }
    const labelWidth = 170;
    const width = Math.max(640, container.clientWidth || 960);
    const plotWidth = width - labelWidth - 16;
    const barHeight = 14;
    const rowGap = 4;
    const lanePad = 8;
    const axisHeight = 22;
    const start = Math.min(...spans.map((s) => s.start_ns));
    const end = Math.max(...spans.map((s) => s.end_ns), start + 1);
    const span_ns = end - start;
    const x = (ns) => labelWidth + ((ns - start) / span_ns) * plotWidth;

    const byLane = new Map();
    for (const span of spans) {
      const lane = span.lane || span.component || "unknown";
      if (!byLane.has(lane)) byLane.set(lane, []);
      byLane.get(lane).push(span);
    }
    const lanes = sortLanes(byLane.keys());
    const layout = new Map(); // lane -> {top, height, packed}
    let top = axisHeight;
    for (const lane of lanes) {
      const packed = packRows(byLane.get(lane));
      const height = lanePad * 2 + packed.rows * barHeight + (packed.rows - 1) * rowGap;
      layout.set(lane, { top, height, packed });
      top += height;
    }
    const height = top + 4;
    const root = svg("svg", { class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Timeline of the task's spans, one lane per component" });
    root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));

    // the time axis
    const axis = svg("g", { class: "axis" });
    const ticks = 6;
    for (let i = 0; i <= ticks; i += 1) {
      const ns = start + (span_ns * i) / ticks;
      const tx = x(ns);
      axis.append(svg("line", { x1: tx, x2: tx, y1: axisHeight - 4, y2: height, class: "tick" }),
        svg("text", { x: tx, y: axisHeight - 8, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle",
          text: formatDuration((ns - start) / 1e6) || "0 ms" }));
    }
    root.append(axis);

    const barY = new Map(); // span_id -> {y, lane}
    lanes.forEach((lane, index) => {
      const { top: laneTop, height: laneHeight, packed } = layout.get(lane);
      const group = svg("g", { class: `lane${index % 2 ? " odd" : ""}`, "data-lane": lane });
      group.append(svg("rect", { class: "lane-bg", x: 0, y: laneTop, width, height: laneHeight }),
        svg("text", { class: "lane-label", x: 8, y: laneTop + laneHeight / 2 + 4, text: lane }));
      for (const span of byLane.get(lane)) {
        const row = packed.rowOf.get(span.span_id) || 0;
        const y = laneTop + lanePad + row * (barHeight + rowGap);
        const x1 = x(span.start_ns);
        const w = Math.max(2, x(span.end_ns) - x1);
        barY.set(span.span_id, { y, lane });
        const bar = svg("g", { class: `span${span.status === "error" ? " error" : ""}`, "data-span": span.span_id,
          "data-name": span.name },
          tooltip(spanTooltip(span)),
          svg("rect", { x: x1, y, width: w, height: barHeight, rx: 2 }));
        if (w > 40) {
          bar.append(svg("text", { x: x1 + 4, y: y + barHeight - 3, class: "span-label",
            text: span.name.length * 6 > w - 8 ? `${span.name.slice(0, Math.max(1, Math.floor((w - 8) / 6) - 1))}…` : span.name }));
        }
        group.append(bar);
      }
      root.append(group);
    });

    // calls and messages: parent on one lane, child on another
    const arrows = svg("g", { class: "arrows" });
    for (const span of spans) {
      const child = barY.get(span.span_id);
      const parent = span.parent_span_id ? barY.get(span.parent_span_id) : null;
      if (!child || !parent || parent.lane === child.lane) continue;
      const ax = x(span.start_ns);
      const down = child.y > parent.y;
      const y1 = down ? parent.y + barHeight : parent.y;
      const y2 = down ? child.y : child.y + barHeight;
      arrows.append(svg("line", { class: "call", x1: ax, y1, x2: ax, y2, "marker-end": "url(#arrow)",
        "data-from": parent.lane, "data-to": child.lane }, tooltip(`${parent.lane} → ${child.lane}: ${span.name}`)));
    }
    root.append(arrows);
    container.replaceChildren(root);
  }

  // -- the plan as a DAG ---------------------------------------------------------------------------

  function drawPlan(container, record) {
    const steps = (record.plan && record.plan.steps) || [];
    if (!steps.length) {
      container.replaceChildren(el("p", { class: "muted", text: "No plan yet." }));
      return;
    }
    const statusOf = new Map((record.steps || []).map((s) => [s.step_id, s]));
    const byId = new Map(steps.map((s) => [s.step_id, s]));
    const depth = new Map();
    const depthOf = (id, seen = new Set()) => {
      if (depth.has(id)) return depth.get(id);
      if (seen.has(id)) return 0; // a cycle (the validator refuses them): drawn flat
      seen.add(id);
      const deps = (byId.get(id).dependencies || []).filter((d) => byId.has(d));
      const d = deps.length ? 1 + Math.max(...deps.map((dep) => depthOf(dep, seen))) : 0;
      depth.set(id, d);
      return d;
    };
    const columns = [];
    for (const step of steps) {
      const d = depthOf(step.step_id);
      (columns[d] = columns[d] || []).push(step);
    }
    const nodeW = 150;
    const nodeH = 40;
    const gapX = 50;
    const gapY = 16;
    const pad = 10;
    const tallest = Math.max(...columns.map((c) => (c ? c.length : 0)));
    const width = pad * 2 + columns.length * nodeW + (columns.length - 1) * gapX;
    const height = pad * 2 + tallest * nodeH + (tallest - 1) * gapY;
    const pos = new Map();
    columns.forEach((column, ci) => {
      const colHeight = column.length * nodeH + (column.length - 1) * gapY;
      column.forEach((step, ri) => {
        pos.set(step.step_id, { x: pad + ci * (nodeW + gapX), y: pad + (height - 2 * pad - colHeight) / 2 + ri * (nodeH + gapY) });
      });
    });
    const root = svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "The task's plan: steps and their dependencies" });
    root.append(svg("defs", {}, svg("marker", { id: "dag-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
      markerHeight: 7, orient: "auto" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
    for (const step of steps) {
      for (const dep of step.dependencies || []) {
        const a = pos.get(dep);
        const b = pos.get(step.step_id);
        if (!a || !b) continue;
        const x1 = a.x + nodeW;
        const y1 = a.y + nodeH / 2;
        const x2 = b.x;
        const y2 = b.y + nodeH / 2;
        const mid = (x1 + x2) / 2;
        root.append(svg("path", { class: "edge", d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
          "marker-end": "url(#dag-arrow)", "data-from": dep, "data-to": step.step_id }));
      }
    }
    for (const step of steps) {
      const p = pos.get(step.step_id);
      const result = statusOf.get(step.step_id);
      const status = result ? result.status : "pending";
      const info = [`${step.step_id}: ${step.action}`, `status ${status}`];
      if (result && result.attempts) info.push(`attempts ${result.attempts}`);
      if (result && result.error) info.push(`error: ${result.error.message}`);
      info.push(`inputs: ${JSON.stringify(step.inputs || {}).slice(0, 400)}`);
      root.append(svg("g", { class: `node step-${status}`, "data-step": step.step_id },
        tooltip(info.join("\n")),
        svg("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 6 }),
        svg("text", { x: p.x + 8, y: p.y + 16, class: "node-id", text: step.step_id }),
        svg("text", { x: p.x + 8, y: p.y + 32, class: "node-action", text: step.action.slice(0, 22) })));
    }
    container.replaceChildren(root);
  }

  // -- system view ---------------------------------------------------------------------------------

  const heartbeats = new Map(); // component name -> heartbeat last shown

  async function refreshSystem() {
    try {
      const view = await api("/v1/system");
      if (state.view !== "system") return;
      renderComponents(view);
      drawMessages($("messages"), view);
      $("system-checked").textContent = `checked ${formatClock(view.checked_at)}`;
      $("messages-window").textContent = `(last ${Math.round(view.window_s)} s)`;
    } catch (error) {
      if (state.view === "system") showBanner(`Could not read the system: ${error.message}`);
    }
  }

  function renderComponents(view) {
    const box = $("components");
    const checked = parseTime(view.checked_at);
    clear(box);
    for (const component of view.components) {
      const beat = component.heartbeat;
      const pulsed = beat && heartbeats.get(component.name) !== beat;
      heartbeats.set(component.name, beat);
      const age = beat ? formatDuration(Math.max(0, checked - parseTime(beat))) : "";
      const card = el("div", { class: `component status-${component.status}`, "data-component": component.name,
        "data-kind": component.kind, "data-status": component.status },
        el("div", { class: "component-head" },
          el("span", { class: `pulse${pulsed ? " beat" : ""}`, title: beat ? `last heard ${beat}` : "never heard" }),
          el("span", { class: "component-name", text: component.name }),
          el("span", { class: "muted", text: component.kind })),
        el("div", { class: "component-status", text: component.status + (age ? ` · heard ${age} ago` : "") }),
        el("div", { class: "component-detail muted", text: describeDetail(component) }));
      box.append(card);
    }
  }

  function describeDetail(component) {
    const d = component.detail || {};
    if (component.kind === "deployment") {
      const replicas = Object.entries(d.replicas || {}).map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ");
      return [replicas && `replicas: ${replicas}`, d.message, d.error].filter(Boolean).join(" · ");
    }
    if (component.kind === "orchestrator") {
      if (d.error) return d.error;
      const tasks = d.tasks || {};
      const r = d.runners || {};
      const running = tasks.running !== undefined ? `${tasks.running} running` : "";
      const queued = tasks.queued !== undefined ? `${tasks.queued} queued` : "";
      return [running, queued, `${r.runners || 0} runners (${r.idle || 0} idle)`].filter(Boolean).join(" · ");
    }
    if (component.kind === "runner_pool") {
      const parts = [`${d.runners} runners`, `${d.idle} idle`, `${d.starting} starting`, `${d.waiting_steps} steps waiting`];
      return parts.concat(d.problems || []).join(" · ");
    }
    return Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
  }

  function drawMessages(container, view) {
    const lanes = new Set();
    for (const m of view.messages) {
      lanes.add(m.source);
      lanes.add(m.target);
    }
    for (const c of view.components) if (c.lane) lanes.add(c.lane);
    const names = sortLanes(lanes);
    if (!names.length) {
      container.replaceChildren(el("p", { class: "muted", text: "No component reported yet." }));
      return;
    }
    const width = Math.max(640, container.clientWidth || 900);
    const nodeW = 110;
    const nodeH = 28;
    const height = 280;
    const rowY = 210; // calls to the right arc above the row, calls to the left below it
    const step = names.length > 1 ? (width - nodeW - 20) / (names.length - 1) : 0;
    const cx = new Map(names.map((name, i) => [name, 10 + nodeW / 2 + i * step]));
    const beats = new Map();
    for (const c of view.components) if (c.lane && c.heartbeat) beats.set(c.lane, c.heartbeat);
    const root = svg("svg", { class: "messages", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "Messages between components per second" });
    root.append(svg("defs", {}, svg("marker", { id: "msg-arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9,
      markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto" },
    svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))));
    const most = Math.max(1, ...view.messages.map((m) => m.count));
    const maxLift = rowY - nodeH / 2 - 16;
    const span = Math.max(1, width - nodeW);
    view.messages.forEach((m) => {
      const x1 = cx.get(m.source);
      const x2 = cx.get(m.target);
      if (x1 === undefined || x2 === undefined || x1 === x2) return;
      const forward = x2 > x1;
      // the farther apart, the higher the arc: arcs of one source do not overlap, nor their labels
      const lift = forward ? 24 + (maxLift - 24) * (Math.abs(x2 - x1) / span) : 40;
      const y = forward ? rowY - nodeH / 2 : rowY + nodeH / 2;
      const apex = forward ? y - lift : y + lift; // of the curve: halfway to its control point
      const control = forward ? y - 2 * lift : y + 2 * lift;
      const label = `${m.source} → ${m.target}: ${m.count} in ${Math.round(view.window_s)} s (${m.per_s}/s)`;
      root.append(svg("path", { class: "message", d: `M ${x1} ${y} Q ${(x1 + x2) / 2} ${control} ${x2} ${y}`,
        "stroke-width": 1 + (4 * m.count) / most, "marker-end": "url(#msg-arrow)", "data-from": m.source,
        "data-to": m.target }, tooltip(label)),
      svg("text", { class: "message-rate", x: (x1 + x2) / 2, y: forward ? apex - 4 : apex + 12, "text-anchor": "middle",
        text: `${m.per_s}/s` }, tooltip(label)));
    });
    for (const name of names) {
      const x = cx.get(name);
      root.append(svg("g", { class: "lane-node", "data-lane": name },
        tooltip(beats.has(name) ? `${name}: last heard ${beats.get(name)}` : name),
        svg("rect", { x: x - nodeW / 2, y: rowY - nodeH / 2, width: nodeW, height: nodeH, rx: 14 }),
        svg("text", { x, y: rowY + 4, "text-anchor": "middle", text: name.length > 16 ? `${name.slice(0, 15)}…` : name })));
    }
    container.replaceChildren(root);
  }

  async function refreshQueues() {
    await Promise.all([refreshApprovals(), refreshReviews(), refreshDlq()]);
  }

  async function refreshApprovals() {
    const body = $("approvals-table").tBodies[0];
    try {
      const answer = await api("/v1/approvals");
      if (state.view !== "system") return;
      clear(body);
      for (const item of answer.approvals) {
        body.append(el("tr", { "data-task-id": item.task_id, "data-step-id": item.step_id },
          el("td", { class: "mono" }, el("a", { href: `#/task/${encodeURIComponent(item.task_id)}`, text: item.task_id }),
            el("div", { class: "muted", text: item.description })),
          el("td", { class: "mono", text: item.step_id }),
          el("td", { text: item.action, title: JSON.stringify(item.inputs) }),
          el("td", { text: item.waiting_since ? formatDuration(Date.now() - parseTime(item.waiting_since)) : "" }),
          el("td", { class: "decision" }, ...decisionControls(item.task_id, item.step_id, refreshApprovals))));
      }
      $("approvals-empty").hidden = answer.approvals.length > 0;
    } catch (error) {
      if (state.view === "system") showBanner(`Could not read the approvals: ${error.message}`);
    }
  }

  function decisionControls(taskId, stepId, after) {
    const reason = el("input", { type: "text", class: "reason", placeholder: "reason (optional)", maxlength: 2000 });
    const outcome = el("span", { class: "outcome" });
    const decide = async (decision, buttons) => {
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const answer = await api(`/v1/tasks/${encodeURIComponent(taskId)}/approvals/${encodeURIComponent(stepId)}`,
          { method: "POST", body: { decision, reason: reason.value } });
        outcome.textContent = `${answer.decision} by ${answer.decided_by}`;
        outcome.className = "outcome ok";
        setTimeout(after, 800);
      } catch (error) {
        outcome.textContent = error.message;
        outcome.className = "outcome error";
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const approve = el("button", { type: "button", class: "approve", text: "Approve" });
    const reject = el("button", { type: "button", class: "reject danger", text: "Reject" });
    approve.addEventListener("click", () => decide("approve", [approve, reject]));
    reject.addEventListener("click", () => decide("reject", [approve, reject]));
    return [reason, approve, reject, outcome];
  }

  async function refreshReviews() {
    const body = $("reviews-table").tBodies[0];
    try {
      const answer = await api("/v1/reviews");
      if (state.view !== "system") return;
      clear(body);
      for (const item of answer.reviews) {
        body.append(el("tr", { "data-task-id": item.task_id, "data-iteration": item.iteration },
          el("td", { class: "mono" }, taskLink(item.task_id),
            el("div", { class: "muted", text: item.description })),
          el("td", { class: "num", text: String(item.iteration) }),
          el("td", { class: "reason-text", text: item.reason, title: item.reason }),
          el("td", { text: item.since ? formatDuration(Date.now() - parseTime(item.since)) : "" }),
          el("td", { text: reviewTimeLeft(item) })));
      }
      $("reviews-empty").hidden = answer.reviews.length > 0;
    } catch (error) {
      if (state.view === "system") showBanner(`Could not read the reviews: ${error.message}`);
    }
  }

  async function refreshDlq() {
    const body = $("dlq-table").tBodies[0];
    try {
      const answer = await api("/v1/dlq");
      if (state.view !== "system") return;
      clear(body);
      for (const entry of answer.entries) {
        const outcome = el("span", { class: "outcome" });
        const retry = el("button", { type: "button", class: "retry", text: "Retry" });
        retry.addEventListener("click", async () => {
          retry.disabled = true;
          try {
            const result = await api(`/v1/dlq/${encodeURIComponent(entry.task_id)}/retry`, { method: "POST" });
            outcome.textContent = `retried: ${result.status}`;
            outcome.className = "outcome ok";
          } catch (error) {
            outcome.textContent = error.message;
            outcome.className = "outcome error";
            retry.disabled = false;
          }
        });
        body.append(el("tr", { "data-task-id": entry.task_id },
          el("td", { class: "mono" }, el("a", { href: `#/task/${encodeURIComponent(entry.task_id)}`, text: entry.task_id }),
            el("div", { class: "muted", text: entry.description })),
          el("td", { text: entry.tenant }),
          el("td", { class: "reason-text", text: entry.reason, title: entry.reason }),
          el("td", { text: formatDuration(Date.now() - parseTime(entry.created_at)) }),
          el("td", {}, retry, outcome)));
      }
      $("dlq-empty").hidden = answer.entries.length > 0;
    } catch (error) {
      if (state.view === "system") showBanner(`Could not read the dead-letter queue: ${error.message}`);
    }
  }

  // -- views and routing ---------------------------------------------------------------------------

  function leaveView() {
    closeTask();
    state.timers.forEach(clearInterval);
    state.timers = [];
  }

  function route() {
    const hash = location.hash || "#/tasks";
    const match = /^#\/task\/(.+)$/.exec(hash);
    if (match) return { view: "task", id: decodeURIComponent(match[1]) };
    if (hash.startsWith("#/system")) return { view: "system" };
    return { view: "tasks" };
  }

  function render() {
    const signedIn = Boolean(state.key);
    $("signin").hidden = signedIn;
    $("nav").hidden = !signedIn;
    $("signout").hidden = !signedIn;
    for (const id of ["tasks-view", "task-view", "system-view"]) $(id).hidden = true;
    if (!signedIn) {
      state.view = null;
      $("whoami").textContent = "";
      $("api-key").focus();
      return;
    }
    leaveView();
    showBanner("");
    $("whoami").textContent = `key ${state.key.split("_").slice(0, 2).join("_")}`; // its id, never the secret
    const target = route();
    state.view = target.view;
    for (const link of $("nav").querySelectorAll("a")) {
      link.classList.toggle("active", link.dataset.view === (target.view === "task" ? "tasks" : target.view));
    }
    if (target.view === "tasks") {
      $("tasks-view").hidden = false;
      loadTasks();
      state.timers.push(setInterval(tickTasks, 1000));
    } else if (target.view === "task") {
      $("task-view").hidden = false;
      openTask(target.id);
    } else {
      $("system-view").hidden = false;
      refreshSystem();
      refreshQueues();
      state.timers.push(setInterval(refreshSystem, SYSTEM_REFRESH_MS), setInterval(refreshQueues, QUEUES_REFRESH_MS));
    }
  }

  function bindFilters() {
    const status = $("filter-status");
    const tenant = $("filter-tenant");
    const search = $("filter-search");
    status.addEventListener("change", () => {
      state.filters.status = status.value;
      loadTasks();
    });
    let tenantTimer = null;
    tenant.addEventListener("input", () => {
      state.filters.tenant = tenant.value;
      clearTimeout(tenantTimer);
      tenantTimer = setTimeout(loadTasks, 400);
    });
    search.addEventListener("input", () => {
      state.filters.search = search.value;
      renderTasks();
    });
  }

  function start() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      $("signin-button").disabled = true;
      try {
        await signIn(key);
        $("api-key").value = "";
        $("signin-error").hidden = true;
        startFeed();
        render();
      } catch (error) {
        $("signin-error").textContent = error.status === 401 ? "This key is not valid." : `Could not sign in: ${error.message}`;
        $("signin-error").hidden = false;
      } finally {
        $("signin-button").disabled = false;
      }
    });
    $("signout").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", () => {
      if (state.key) render();
    });
    bindFilters();
    state.key = sessionStorage.getItem(KEY_STORAGE);
    if (state.key) startFeed();
    render();
  }

  // exposed for tests of the parser in the browser
  window.officerayConsole = { createSseParser, packRows, sortLanes, subtaskDepths };
  document.addEventListener("DOMContentLoaded", start);
})();
