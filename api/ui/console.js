// opscase operator console. One plain script, no framework, no build step.
//
// How it hangs together, top-down:
//   boot → sign-in (GET /v1/me) → router (location.hash) → a "page" per route:
//   the case list (GET /v1/cases + the all-cases event stream) or a case page
//   (GET /v1/cases/{id} and its sections + the case's event stream).
// A page owns an AbortController: leaving the page or signing out aborts its requests and
// streams at once. Every piece of text goes through textContent (the h() helper below), never
// innerHTML, so whatever a case, a plan or an alert says is shown as text.
'use strict';

(() => {
  // ---------------------------------------------------------------------------------------
  // Errors and CSP violations are collected where a test (or a person) can read them.
  // ---------------------------------------------------------------------------------------
  window.__errors = window.__errors || [];
  window.addEventListener('error', (e) => {
    window.__errors.push({ type: 'error', message: String(e.message), source: e.filename, line: e.lineno });
  });
  window.addEventListener('unhandledrejection', (e) => {
    const reason = e.reason;
    window.__errors.push({ type: 'unhandledrejection', message: String((reason && reason.message) || reason) });
  });
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__errors.push({
      type: 'csp', directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile, line: e.lineNumber,
    });
  });

  // ---------------------------------------------------------------------------------------
  // Constants
  // ---------------------------------------------------------------------------------------
  const KEY_STORAGE = 'opscase.key';
  const MAIN_PATH = ['NEW', 'ANALYZING', 'PLANNING', 'WAIT_GATE', 'EXECUTING', 'VERIFYING', 'CLOSED'];
  const STATUSES = MAIN_PATH.concat(['PARKED']);
  const LIST_PAGE = 50;
  const TIMELINE_PAGE = 200;
  const TIMELINE_MAX = 10000;
  const REFRESH_DEBOUNCE_MS = 300;
  const FILTER_DEBOUNCE_MS = 300;
  const RECONNECT_MS = 1500;
  const RECONNECT_MAX_MS = 30000;
  const POLL_MS = 5000;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const FILTERS = ['status', 'tenant', 'severity', 'source', 'automation', 'q'];

  // Transitions offered on the case page, and who may ask for them (the API checks anyway).
  const ACTIONS = {
    start_analysis: { label: 'Start analysis', who: 'operate', when: ['NEW'] },
    gate_approved: { label: 'Approve plan', who: 'decide', when: ['WAIT_GATE'] },
    gate_rejected: { label: 'Reject plan', who: 'decide', when: ['WAIT_GATE'], reason: true },
    resume: { label: 'Resume', who: 'operate', when: ['PARKED'], reason: true },
    cancel: { label: 'Cancel case', who: 'operate', when: STATUSES.filter((s) => s !== 'CLOSED'), reason: true },
  };

  // Commands to the workers: each writes a cmd.* and waits (bounded) for the worker's answer.
  const COMMANDS = {
    // Not in NEW: the API refuses it there (409); "Start analysis" is what moves a NEW case.
    plan: { label: 'Generate plan', path: '/v1/plan/generate', when: ['ANALYZING', 'PLANNING'] },
    gate: { label: 'Evaluate gate', path: '/v1/gate/eval', when: ['WAIT_GATE'] },
    run: { label: 'Run plan', path: '/v1/adapter/exec', when: ['EXECUTING'] },
    verify: { label: 'Run verification', path: '/v1/verify/run', when: ['VERIFYING'] },
  };

  // The case's sections, each loaded from its own route.
  const SECTIONS = {
    plan: { path: 'plans', render: renderPlans },
    decisions: { path: 'decisions', render: renderDecisions },
    executions: { path: 'executions', render: renderExecutions },
    verifications: { path: 'verifications', render: renderVerifications },
    evidence: { path: 'evidence', render: renderEvidence },
    findings: { path: 'findings', render: renderFindings },
  };

  const state = {
    key: null, // the API key; only ever sent as the Authorization header
    me: null, // GET /v1/me
    page: null, // the current route's page (see newPage)
    filters: { status: '', tenant: '', severity: '', source: '', automation: '', q: '' },
    focusOnRoute: false,
  };

  // ---------------------------------------------------------------------------------------
  // DOM helpers
  // ---------------------------------------------------------------------------------------
  const $ = (selector) => document.querySelector(selector);
  const $$ = (selector) => Array.from(document.querySelectorAll(selector));

  // h('a', {href, class, dataset, onclick}, ...children): an element, its text set as text.
  function h(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === undefined || value === null || value === false) continue;
        if (name === 'class') node.className = value;
        else if (name === 'text') node.textContent = String(value);
        else if (name === 'dataset') Object.assign(node.dataset, value);
        else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
        else if (name === 'hidden' || name === 'disabled' || name === 'open') node[name] = Boolean(value);
        else node.setAttribute(name, value === true ? '' : String(value));
      }
    }
    appendChildren(node, children);
    return node;
  }

  // Replace a node's children; null, false and '' are skipped and arrays flattened (unlike
  // replaceChildren, which would print "null").
  function fill(node, ...children) {
    node.replaceChildren();
    appendChildren(node, children);
  }

  function appendChildren(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false || child === '') continue;
      node.append(child instanceof Node ? child : String(child));
    }
  }

  function pad2(n) {
    return n < 10 ? '0' + n : String(n);
  }

  // Local time, sortable and compact: 2026-12-03 08:15:02.
  function formatTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function timeEl(iso) {
    return iso ? h('time', { datetime: iso, title: iso }, formatTime(iso)) : '';
  }

  function badge(status) {
    return h('span', { class: `badge status-${safeClass(status)}` }, status || '?');
  }

  function severityEl(severity) {
    return h('span', { class: `sev sev-${safeClass(severity)}` }, severity || '');
  }

  function safeClass(text) {
    return String(text || '').replace(/[^A-Za-z0-9_-]/g, '_');
  }

  function isHttpUrl(url) {
    return typeof url === 'string' && /^https?:\/\/[^\s]+$/i.test(url.trim());
  }

  // A link only for http(s) URLs; anything else (javascript:, data:, a path) is shown as text.
  function externalLink(url, text) {
    if (!isHttpUrl(url)) return h('span', null, text || url || '');
    return h('a', { href: url.trim(), rel: 'noopener noreferrer', target: '_blank' }, text || url);
  }

  function caseHref(id) {
    return UUID_RE.test(String(id)) ? `#/cases/${String(id).toLowerCase()}` : null;
  }

  function compactJson(value) {
    if (value === undefined) return '';
    try {
      return JSON.stringify(value);
    } catch (_) {
      return String(value);
    }
  }

  function table(headers, rows, props) {
    return h('div', { class: 'table-wrap' },
      h('table', Object.assign({ class: 'data' }, props || {}),
        h('thead', null, h('tr', null, headers.map((name) => h('th', { scope: 'col' }, name)))),
        h('tbody', null, rows)));
  }

  function empty(text) {
    return h('p', { class: 'empty' }, text);
  }

  function keyValues(pairs) {
    return h('p', { class: 'kv' }, pairs
      .filter(([, value]) => value !== undefined && value !== null && value !== '')
      .map(([name, value]) => [h('span', { class: 'nowrap' }, h('span', { class: 'k' }, name), value), ' ']));
  }

  function uuid() {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // randomUUID exists only in secure contexts; a console served over plain http still needs keys.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // ---------------------------------------------------------------------------------------
  // The API. Every call answers {ok, status, data, text, problem, headers} or {aborted: true};
  // it never throws, so callers handle one shape.
  // ---------------------------------------------------------------------------------------
  async function api(method, path, options = {}) {
    const key = options.key || state.key;
    const headers = Object.assign({ Accept: 'application/json', Authorization: `Bearer ${key}` }, options.headers);
    const init = { method, headers, cache: 'no-store', credentials: 'omit', signal: options.signal };
    if (options.body !== undefined) {
      init.body = JSON.stringify(options.body);
      headers['Content-Type'] = 'application/json';
    }
    let response;
    let text;
    try {
      response = await fetch(path, init);
      text = await response.text();
    } catch (err) {
      if (options.signal && options.signal.aborted) return { aborted: true };
      return {
        ok: false, status: 0, network: true,
        problem: { title: 'Network error', detail: `opscase could not be reached (${err.message})` },
      };
    }
    const data = parseJson(text);
    if (response.ok) return { ok: true, status: response.status, data, text, headers: response.headers };
    const problem = toProblem(response, data, text);
    if (response.status === 401 && !options.key) {
      handleUnauthorized(problem);
      return { aborted: true };
    }
    return { ok: false, status: response.status, problem, headers: response.headers };
  }

  function parseJson(text) {
    if (!text) return null;
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  // Errors are problem+json ({type, title, status, detail, ...}); anything else is wrapped alike.
  function toProblem(response, data, text) {
    if (data && typeof data === 'object' && (data.detail || data.title)) return data;
    return {
      status: response.status,
      title: response.statusText || `HTTP ${response.status}`,
      detail: (text && text.length < 300 ? text : '') || `HTTP ${response.status} ${response.statusText || ''}`.trim(),
    };
  }

  function problemText(problem) {
    if (!problem) return 'unknown error';
    return String(problem.detail || problem.title || `HTTP ${problem.status}`);
  }

  function handleUnauthorized(problem) {
    signOut(`Signed out: the API key was refused (${problemText(problem)}).`);
  }

  // ---------------------------------------------------------------------------------------
  // #notice: the outcome of the last action, read out by screen readers (aria-live).
  // ---------------------------------------------------------------------------------------
  function showNotice(kind, text, extra = {}) {
    const notice = $('#notice');
    // An error interrupts (alert); anything else waits its turn (status).
    notice.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    notice.className = `notice is-${kind}`;
    const body = h('div', { class: 'notice-text' },
      h('strong', null, text),
      extra.detail ? [' ', h('span', { class: 'notice-detail' }, extra.detail)] : null,
      extra.list && extra.list.length ? h('ul', null, extra.list.map((item) => h('li', null, item))) : null);
    notice.replaceChildren(body, ...(extra.buttons || []));
  }

  function clearNotice() {
    const notice = $('#notice');
    notice.replaceChildren();
    notice.className = 'notice';
    notice.setAttribute('role', 'status');
  }

  function setLive(mode, text) {
    const live = $('#live');
    live.hidden = false;
    live.className = `live ${mode === 'on' ? 'on' : 'off'}`;
    live.textContent = mode === 'on' ? 'live' : mode === 'retry' ? 'reconnecting…' : 'live updates off';
    live.title = text || '';
  }

  // ---------------------------------------------------------------------------------------
  // Sign-in and sign-out
  // ---------------------------------------------------------------------------------------
  async function signIn(key) {
    const button = $('#signin-submit');
    button.disabled = true;
    showNotice('info', 'Signing in…');
    const result = await api('GET', '/v1/me', { key });
    button.disabled = false;
    if (!result.ok) {
      showNotice('error', result.status === 401 ? 'Sign-in refused.' : 'Sign-in failed.', { detail: problemText(result.problem) });
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $('#signin-key').value = '';
    clearNotice();
    enterApp(key, result.data);
  }

  async function restoreSession(key) {
    const result = await api('GET', '/v1/me', { key });
    if (result.ok) {
      enterApp(key, result.data);
      return;
    }
    if (result.status === 401) sessionStorage.removeItem(KEY_STORAGE);
    showSignIn();
    showNotice('error', result.status === 401 ? 'The saved key was refused; sign in again.' : 'Could not reach opscase.',
      { detail: problemText(result.problem) });
  }

  function enterApp(key, me) {
    state.key = key;
    state.me = me;
    const roles = (me.roles || []).join(', ');
    $('#whoami').textContent = `${me.name} · ${roles}`;
    $('#whoami').title = me.tenant ? `tenant ${me.tenant}` : 'all tenants';
    $('#signout').hidden = false;
    $('#nav').hidden = false;
    $('#new-case').hidden = !can('operate');
    route();
  }

  function signOut(message) {
    disposePage();
    state.key = null;
    state.me = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $('#whoami').textContent = '';
    $('#whoami').removeAttribute('title');
    $('#signout').hidden = true;
    $('#nav').hidden = true;
    $('#live').hidden = true;
    // Nothing the last key could read stays in the page.
    $('#cases tbody').replaceChildren();
    resetCaseView();
    showSignIn();
    if (message) showNotice('error', message);
    else clearNotice();
  }

  function showSignIn() {
    showView('signin');
    $('#signin-key').focus();
  }

  function can(what) {
    const roles = new Set((state.me && state.me.roles) || []);
    if (roles.has('admin')) return true;
    if (what === 'operate') return roles.has('operator');
    if (what === 'decide') return roles.has('approver');
    return false;
  }

  // ---------------------------------------------------------------------------------------
  // Router: #/ is the list, #/cases/<uuid> a case. Each route gets a fresh page.
  // ---------------------------------------------------------------------------------------
  function parseRoute(hash) {
    const path = hash.replace(/^#/, '');
    const match = /^\/cases\/([0-9a-fA-F-]{36})\/?$/.exec(path);
    if (match && UUID_RE.test(match[1])) return { name: 'case', id: match[1].toLowerCase() };
    return { name: 'list' };
  }

  function route() {
    if (!state.me) return;
    disposePage();
    clearNotice();
    $('#live').hidden = true; // the new page's stream says how it is doing
    const target = parseRoute(location.hash);
    const page = newPage(target.name);
    state.page = page;
    if (target.name === 'case') openCasePage(page, target.id);
    else openListPage(page);
    if (state.focusOnRoute) $('#main').focus();
    state.focusOnRoute = false;
  }

  function newPage(name) {
    const controller = new AbortController();
    const timers = new Set();
    return {
      name,
      signal: controller.signal,
      inflight: new Set(), // buttons whose request is in flight
      get alive() { return !controller.signal.aborted; },
      later(fn, ms) {
        const timer = setTimeout(() => { timers.delete(timer); if (!controller.signal.aborted) fn(); }, ms);
        timers.add(timer);
        return timer;
      },
      cancel(timer) {
        clearTimeout(timer);
        timers.delete(timer);
      },
      dispose() {
        controller.abort();
        timers.forEach(clearTimeout);
        timers.clear();
      },
    };
  }

  function disposePage() {
    if (state.page) state.page.dispose();
    state.page = null;
  }

  function showView(name) {
    $('#signin-view').hidden = name !== 'signin';
    $('#list-view').hidden = name !== 'list';
    $('#case-view').hidden = name !== 'case';
  }

  // ---------------------------------------------------------------------------------------
  // Server-Sent Events over fetch (EventSource cannot send the Authorization header).
  // ---------------------------------------------------------------------------------------
  function openEventStream(url, { signal, lastId, onEvent, onStatus }) {
    let last = lastId || null;
    const run = async () => {
      let delay = RECONNECT_MS;
      while (!signal.aborted) {
        try {
          const headers = { Authorization: `Bearer ${state.key}`, Accept: 'text/event-stream' };
          if (last) headers['Last-Event-ID'] = last;
          const response = await fetch(url, { headers, signal, cache: 'no-store', credentials: 'omit' });
          if (response.status === 401) {
            handleUnauthorized(toProblem(response, parseJson(await response.text()), ''));
            return;
          }
          if (!response.ok || !response.body) {
            const text = await response.text();
            onStatus('off', problemText(toProblem(response, parseJson(text), text)));
            // A malformed request, a refusal or a missing case will not heal by retrying.
            if ([400, 403, 404, 405].includes(response.status)) return;
            delay = Math.min(delay * 2, RECONNECT_MAX_MS);
          } else {
            onStatus('on', url);
            delay = RECONNECT_MS;
            await readEvents(response.body, signal, (event) => {
              if (event.id) last = event.id;
              deliver(onEvent, event);
            });
            if (signal.aborted) return;
            onStatus('retry', 'the stream ended; reconnecting');
          }
        } catch (err) {
          if (signal.aborted) return;
          onStatus('retry', `connection lost (${err.message}); reconnecting`);
        }
        await sleep(delay, signal);
      }
    };
    run();
  }

  // A handler's bug must not end the stream; it is recorded like any other error.
  function deliver(onEvent, event) {
    try {
      onEvent(event);
    } catch (err) {
      window.__errors.push({ type: 'error', message: `event handler: ${err.message}` });
    }
  }

  // Parse the text/event-stream body: events end at a blank line; `data:` lines join with \n.
  async function readEvents(body, signal, dispatch) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const stop = () => reader.cancel().catch(() => {});
    signal.addEventListener('abort', stop, { once: true });
    let buffer = '';
    let type = '';
    let data = [];
    let id = null;
    const takeLine = (line) => {
      if (line === '') {
        if (data.length) dispatch({ type: type || 'message', id, data: data.join('\n') });
        type = '';
        data = [];
        return;
      }
      if (line[0] === ':') return; // a comment: the server's keep-alive
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
      else if (field === 'id' && !value.includes('\0')) id = value;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        // A CR at the end may be the first half of a CRLF: keep it for the next chunk.
        let held = '';
        if (buffer.endsWith('\r')) {
          held = '\r';
          buffer = buffer.slice(0, -1);
        }
        const lines = buffer.split(/\r\n|\n|\r/);
        buffer = lines.pop() + held;
        lines.forEach(takeLine);
      }
    } finally {
      signal.removeEventListener('abort', stop);
    }
  }

  // ---------------------------------------------------------------------------------------
  // Case list
  // ---------------------------------------------------------------------------------------
  function openListPage(page) {
    showView('list');
    document.title = 'Cases · opscase';
    page.rows = new Map(); // case id → {item, tr}
    page.cursor = null;
    page.listSeq = 0;
    page.pending = new Map(); // case id → refresh timer
    writeFilterInputs();
    closeNewCasePanel();
    $('#more').hidden = true;
    $('#list-empty').hidden = true;
    $('#cases tbody').replaceChildren(messageRow('Loading…', 'empty'));
    loadCases(page, true);
    openEventStream('/v1/events', {
      signal: page.signal,
      onEvent: (event) => onListEvent(page, event),
      onStatus: setLive,
    });
  }

  function messageRow(text, className) {
    return h('tr', null, h('td', { colspan: 7, class: className }, text));
  }

  function listQuery(cursor) {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = state.filters[name].trim();
      if (value) params.set(name, value);
    }
    params.set('limit', String(LIST_PAGE));
    if (cursor) params.set('cursor', cursor);
    return params.toString();
  }

  async function loadCases(page, reset) {
    const seq = ++page.listSeq; // a newer query (a filter typed since) wins
    const more = $('#more');
    more.disabled = true;
    const result = await api('GET', `/v1/cases?${listQuery(reset ? null : page.cursor)}`, { signal: page.signal });
    if (result.aborted || seq !== page.listSeq) return;
    more.disabled = false;
    const tbody = $('#cases tbody');
    if (!result.ok) {
      const row = messageRow(`Could not load the cases: ${problemText(result.problem)}`, 'error');
      if (reset) tbody.replaceChildren(row);
      else showNotice('error', 'Could not load more cases.', { detail: problemText(result.problem) });
      return;
    }
    if (reset) {
      tbody.replaceChildren();
      page.rows.clear();
    }
    const fragment = document.createDocumentFragment();
    for (const item of result.data.items || []) {
      if (page.rows.has(item.id)) continue;
      const tr = caseRow(item);
      page.rows.set(item.id, { item, tr });
      fragment.append(tr);
    }
    tbody.append(fragment);
    page.cursor = result.data.next_cursor || null;
    more.hidden = !page.cursor;
    $('#list-empty').hidden = page.rows.size > 0;
  }

  function caseRow(item) {
    const tr = h('tr', { dataset: { caseId: item.id } });
    fillCaseRow(tr, item);
    return tr;
  }

  function fillCaseRow(tr, item) {
    tr.replaceChildren(
      h('td', { class: 'title' }, h('a', { href: caseHref(item.id) }, item.title)),
      h('td', null, badge(item.status)),
      h('td', null, severityEl(item.severity)),
      h('td', null, item.tenant),
      h('td', null, item.source),
      h('td', null, item.automation),
      h('td', { class: 'nowrap' }, timeEl(item.updated_at)));
    tr.dataset.status = item.status;
    tr.dataset.version = String(item.version);
  }

  function onListEvent(page, event) {
    if (event.type !== 'timeline') return;
    const entry = parseJson(event.data);
    if (!entry || !entry.case_id) return;
    if (page.rows.has(entry.case_id)) scheduleRowRefresh(page, entry.case_id);
    else if (entry.event === 'open') scheduleRowRefresh(page, entry.case_id);
  }

  // Several rows of one case in a burst cost one read of the case.
  function scheduleRowRefresh(page, caseId) {
    if (page.pending.has(caseId)) page.cancel(page.pending.get(caseId));
    page.pending.set(caseId, page.later(() => {
      page.pending.delete(caseId);
      refreshListCase(page, caseId);
    }, REFRESH_DEBOUNCE_MS));
  }

  async function refreshListCase(page, caseId) {
    const result = await api('GET', `/v1/cases/${caseId}`, { signal: page.signal });
    if (result.aborted || !result.ok) return;
    const item = result.data;
    const known = page.rows.get(caseId);
    if (known) {
      if (item.version < known.item.version) return; // an older read answered late
      known.item = item;
      fillCaseRow(known.tr, item);
    } else if (matchesFilters(item)) {
      const tr = caseRow(item);
      page.rows.set(item.id, { item, tr });
      $('#cases tbody').prepend(tr);
      $('#list-empty').hidden = true;
    }
  }

  function matchesFilters(item) {
    const f = state.filters;
    const same = (value, wanted) => !wanted.trim() || String(value) === wanted.trim();
    const q = f.q.trim().toLowerCase();
    return same(item.status, f.status) && same(item.tenant, f.tenant) && same(item.severity, f.severity) &&
      same(item.source, f.source) && same(item.automation, f.automation) &&
      (!q || String(item.title).toLowerCase().includes(q));
  }

  function writeFilterInputs() {
    for (const name of FILTERS) $(`#filter-${name}`).value = state.filters[name];
  }

  function onFilterChanged(name, value, debounce) {
    state.filters[name] = value;
    const page = state.page;
    if (!page || page.name !== 'list') return;
    if (page.filterTimer) page.cancel(page.filterTimer);
    const reload = () => loadCases(page, true);
    if (debounce) page.filterTimer = page.later(reload, FILTER_DEBOUNCE_MS);
    else reload();
  }

  // Clicking anywhere on a row opens the case, like its title link (which the keyboard uses).
  function onCasesTableClick(event) {
    if (event.target.closest('a, button')) return;
    const tr = event.target.closest('tr[data-case-id]');
    if (tr) navigate(caseHref(tr.dataset.caseId));
  }

  function navigate(hash) {
    if (!hash) return;
    state.focusOnRoute = true;
    location.hash = hash;
  }

  // --- Opening a case -------------------------------------------------------------------
  function toggleNewCasePanel() {
    const panel = $('#new-case-panel');
    if (panel.hidden) {
      panel.hidden = false;
      $('#new-case').setAttribute('aria-expanded', 'true');
      $('#new-case-title').focus();
    } else {
      closeNewCasePanel();
    }
  }

  function closeNewCasePanel() {
    $('#new-case-panel').hidden = true;
    $('#new-case').setAttribute('aria-expanded', 'false');
  }

  // "key=value" lines → {key: value}; a line without "=" is a mistake worth saying.
  function parseLabels(text) {
    const labels = {};
    const lines = text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
    for (const line of lines) {
      const eq = line.indexOf('=');
      if (eq <= 0) throw new Error(`"${line}" is not key=value`);
      labels[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    return labels;
  }

  function submitNewCase() {
    const page = state.page;
    if (!page || page.name !== 'list') return;
    const title = $('#new-case-title').value.trim();
    if (!title) {
      showNotice('error', 'A case needs a title.');
      $('#new-case-title').focus();
      return;
    }
    let labels;
    try {
      labels = parseLabels($('#new-case-labels').value);
    } catch (err) {
      showNotice('error', 'The labels are not right.', { detail: err.message });
      $('#new-case-labels').focus();
      return;
    }
    const body = {
      title,
      severity: $('#new-case-severity').value,
      automation: $('#new-case-automation').value,
      actor: state.me.name,
    };
    const tenant = $('#new-case-tenant').value.trim();
    if (tenant) body.tenant = tenant;
    if (Object.keys(labels).length) body.labels = labels;
    perform(page, $('#new-case-submit'), {
      label: 'Open case',
      send: (key) => api('POST', '/v1/cases', { body, headers: { 'Idempotency-Key': key }, signal: page.signal }),
      onOk: (result) => {
        const item = result.data;
        $('#new-case-form').reset();
        closeNewCasePanel();
        if (!page.rows.has(item.id)) {
          const tr = caseRow(item);
          page.rows.set(item.id, { item, tr });
          $('#cases tbody').prepend(tr);
          $('#list-empty').hidden = true;
        }
        showNotice('ok', 'Case opened:', {
          detail: h('a', { href: caseHref(item.id) }, item.title),
        });
      },
    });
  }

  // ---------------------------------------------------------------------------------------
  // Case page
  // ---------------------------------------------------------------------------------------
  async function openCasePage(page, caseId) {
    showView('case');
    Object.assign(page, {
      caseId,
      item: null, // the case as last read
      rowIds: new Set(), // timeline rows shown
      rows: [], // timeline rows, oldest first
      queue: [], // rows waiting to be appended
      flushTimer: null,
      refreshTimer: null,
      sectionSeq: {},
      sectionText: {},
      sectionData: {},
      pollTimer: null,
      followTimeline: true, // keep the newest row in view until the person scrolls up
      autoScrollTop: 0,
    });
    resetCaseView();
    // The case and its timeline are read side by side: the timeline is the long read.
    const timelineLoaded = loadTimeline(page);
    const found = await refreshCase(page);
    if (!page.alive || !found) return;
    Object.keys(SECTIONS).forEach((name) => loadSection(page, name));
    const loaded = await timelineLoaded;
    if (!page.alive) return;
    const lastRow = page.rows[page.rows.length - 1];
    openEventStream(`/v1/cases/${caseId}/events`, {
      signal: page.signal,
      // Resume after what the timeline route gave; without it the stream sends everything.
      lastId: loaded && lastRow ? String(lastRow.id) : null,
      onEvent: (event) => onCaseEvent(page, event),
      onStatus: (mode, text) => {
        setLive(mode, text);
        pollWhileStreamDown(page, mode !== 'on');
      },
    });
  }

  // While the stream is down the case and its sections are still re-read now and then, so the
  // status never goes stale; the timeline's missed rows come when the stream resumes.
  function pollWhileStreamDown(page, down) {
    if (!down) {
      if (page.pollTimer) page.cancel(page.pollTimer);
      page.pollTimer = null;
      return;
    }
    if (page.pollTimer) return;
    const tick = () => {
      page.pollTimer = page.later(tick, POLL_MS);
      refreshAll(page);
    };
    page.pollTimer = page.later(tick, POLL_MS);
  }

  function resetCaseView() {
    for (const id of ['case-title', 'case-status', 'case-version', 'case-severity', 'case-automation', 'case-tenant',
      'case-source', 'case-resolution', 'case-created', 'case-updated', 'case-labels', 'case-id']) {
      $(`#${id}`).replaceChildren();
    }
    $('#case-title').textContent = 'Loading…';
    $('#case-status').className = 'badge';
    $('#state-diagram').replaceChildren();
    $('#actions').hidden = true;
    $('#action-reason').value = '';
    $('#gate-hint').hidden = true;
    $$('#actions button').forEach((button) => { button.disabled = false; });
    $('#evidence-form').reset();
    $('#evidence-add').open = false;
    $('#evidence-add').hidden = true;
    $('#evidence-submit').disabled = false;
    $('#timeline-count').textContent = '';
    for (const name of ['timeline'].concat(Object.keys(SECTIONS))) {
      sectionBody(name).replaceChildren(empty('Loading…'));
    }
  }

  function sectionBody(name) {
    return $(`#${name} > .section-body`);
  }

  async function refreshCase(page) {
    const result = await api('GET', `/v1/cases/${page.caseId}`, { signal: page.signal });
    if (result.aborted || !page.alive) return false;
    if (!result.ok) {
      if (!page.item) showCaseUnavailable(result.problem);
      // A blip while the stream is down is already shown by the live indicator.
      else if (!result.network) showNotice('error', 'Could not refresh the case.', { detail: problemText(result.problem) });
      return false;
    }
    applyCase(page, result.data);
    return true;
  }

  function showCaseUnavailable(problem) {
    $('#case-title').textContent = 'Case not available';
    const text = `Could not load the case: ${problemText(problem)}`;
    for (const name of ['timeline'].concat(Object.keys(SECTIONS))) {
      sectionBody(name).replaceChildren(h('p', { class: 'error' }, text));
    }
    showNotice('error', 'Could not load the case.', { detail: problemText(problem) });
  }

  // The newest read of the case wins; a late answer to an older read is dropped.
  function applyCase(page, item) {
    if (!item || (page.item && item.version < page.item.version)) return;
    page.item = item;
    renderCaseHeader(item);
    renderDiagram(item.status);
    renderActions(page);
  }

  function renderCaseHeader(item) {
    $('#case-title').textContent = item.title;
    const status = $('#case-status');
    status.textContent = item.status;
    status.className = `badge status-${safeClass(item.status)}`;
    $('#case-version').textContent = String(item.version);
    $('#case-severity').replaceChildren(severityEl(item.severity));
    $('#case-automation').textContent = item.automation || '';
    $('#case-tenant').textContent = item.tenant || '';
    $('#case-source').textContent = item.source || '';
    $('#case-resolution').textContent = item.resolution || '—';
    $('#case-created').replaceChildren(timeEl(item.created_at), item.created_by ? ` by ${item.created_by}` : '');
    $('#case-updated').replaceChildren(timeEl(item.updated_at));
    const labels = Object.entries(item.labels || {});
    $('#case-labels').replaceChildren(...(labels.length
      ? labels.map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`))
      : [h('span', { class: 'muted' }, 'none')]));
    $('#case-id').textContent = item.id;
    document.title = `${item.status} · ${item.title} · opscase`;
  }

  // The happy path in a row, PARKED below it; the current state is marked (class, aria-current).
  function renderDiagram(status) {
    const root = $('#state-diagram');
    if (!root.firstChild) {
      const list = h('ol', null,
        MAIN_PATH.map((s) => h('li', { class: 'state main', dataset: { state: s } }, s)),
        h('li', { class: 'state side', dataset: { state: 'PARKED' } }, 'PARKED'));
      root.append(list);
    }
    const reached = MAIN_PATH.indexOf(status);
    for (const li of root.querySelectorAll('li')) {
      const s = li.dataset.state;
      const current = s === status;
      li.className = `state ${s === 'PARKED' ? 'side' : 'main'}`;
      if (current) li.classList.add('current', `status-${s}`);
      else if (reached > 0 && MAIN_PATH.indexOf(s) >= 0 && MAIN_PATH.indexOf(s) < reached) li.classList.add('visited');
      if (current) li.setAttribute('aria-current', 'step');
      else li.removeAttribute('aria-current');
    }
  }

  // Offer what the key's roles and the case's status allow; the API decides in the end.
  function renderActions(page) {
    const status = page.item.status;
    let offered = 0;
    for (const button of $$('#actions button[data-action]')) {
      const action = ACTIONS[button.dataset.action];
      const show = Boolean(action) && action.when.includes(status) && can(action.who);
      button.hidden = !show;
      button.disabled = page.inflight.has(buttonKey(button));
      if (show) offered += 1;
    }
    for (const button of $$('#actions button[data-command]')) {
      const command = COMMANDS[button.dataset.command];
      const show = Boolean(command) && command.when.includes(status) && can('operate');
      button.hidden = !show;
      button.disabled = page.inflight.has(buttonKey(button));
      if (show) offered += 1;
    }
    $('#actions').hidden = offered === 0;
    $('#evidence-add').hidden = !can('operate');
    renderGateHint(page);
  }

  // At the gate, say whose plan it is: four eyes means its proposer cannot approve it.
  function renderGateHint(page) {
    const hint = $('#gate-hint');
    const plans = page.sectionData.plan && page.sectionData.plan.items;
    const current = plans && page.item && plans.find((p) => p.id === page.item.current_plan_id);
    if (!page.item || page.item.status !== 'WAIT_GATE' || !current || !can('decide')) {
      hint.hidden = true;
      return;
    }
    const mine = state.me && current.requested_by_key === `key:${state.me.key_id}`;
    hint.textContent = mine
      ? `This key asked for the plan (proposed by ${current.requested_by}), so it cannot approve it: another approver must (four eyes).`
      : `Plan proposed by ${current.requested_by}${current.requested_by_key ? `, asked for by ${current.requested_by_key}` : ''}.`;
    hint.hidden = false;
  }

  function buttonKey(button) {
    if (button.dataset.action) return `action:${button.dataset.action}`;
    if (button.dataset.command) return `command:${button.dataset.command}`;
    return button.id;
  }

  // --- Live updates -----------------------------------------------------------------------
  function onCaseEvent(page, event) {
    if (event.type !== 'timeline') return;
    const entry = parseJson(event.data);
    if (!entry || entry.id === undefined) return;
    if (entry.case_id && entry.case_id !== page.caseId) return;
    if (page.rowIds.has(String(entry.id))) return;
    page.rowIds.add(String(entry.id));
    page.queue.push(entry);
    if (!page.flushTimer) page.flushTimer = page.later(() => flushTimeline(page), 0);
    scheduleCaseRefresh(page);
  }

  // Re-read the case and its small sections once a burst of rows has settled.
  function scheduleCaseRefresh(page) {
    if (page.refreshTimer) page.cancel(page.refreshTimer);
    page.refreshTimer = page.later(() => {
      page.refreshTimer = null;
      refreshAll(page);
    }, REFRESH_DEBOUNCE_MS);
  }

  function refreshAll(page) {
    refreshCase(page);
    Object.keys(SECTIONS).forEach((name) => loadSection(page, name));
  }

  // --- Sections ---------------------------------------------------------------------------
  async function loadSection(page, name) {
    const seq = (page.sectionSeq[name] || 0) + 1;
    page.sectionSeq[name] = seq;
    const result = await api('GET', `/v1/cases/${page.caseId}/${SECTIONS[name].path}`, { signal: page.signal });
    if (result.aborted || !page.alive || page.sectionSeq[name] !== seq) return;
    if (!result.ok) {
      if (result.network && page.sectionData[name]) return; // keep what was shown through a blip
      page.sectionText[name] = null;
      sectionBody(name).replaceChildren(h('p', { class: 'error' }, `Could not load: ${problemText(result.problem)}`));
      return;
    }
    if (page.sectionText[name] === result.text) return; // unchanged: keep the DOM (and open details)
    page.sectionText[name] = result.text;
    page.sectionData[name] = result.data || {};
    renderSection(page, name);
  }

  function renderSection(page, name) {
    const data = page.sectionData[name];
    if (!data) return;
    let nodes;
    try {
      nodes = SECTIONS[name].render(page, data);
    } catch (err) {
      nodes = [h('p', { class: 'error' }, `Could not show this section: ${err.message}`)];
      window.__errors.push({ type: 'error', message: `render ${name}: ${err.message}` });
    }
    fill(sectionBody(name), nodes);
    if (name === 'plan') renderGateHint(page);
  }

  // --- Timeline ---------------------------------------------------------------------------
  async function loadTimeline(page) {
    const rows = [];
    let cursor = null;
    do {
      const params = new URLSearchParams({ limit: String(TIMELINE_PAGE) });
      if (cursor) params.set('cursor', cursor);
      const result = await api('GET', `/v1/cases/${page.caseId}/timeline?${params}`, { signal: page.signal });
      if (result.aborted || !page.alive) return false;
      if (!result.ok) {
        sectionBody('timeline').replaceChildren(h('p', { class: 'error' }, `Could not load: ${problemText(result.problem)}`));
        return false;
      }
      rows.push(...(result.data.items || []));
      cursor = result.data.next_cursor || null;
    } while (cursor && rows.length < TIMELINE_MAX);
    renderTimeline(page, rows, Boolean(cursor));
    return true;
  }

  const TIMELINE_HEADERS = ['Time', 'Event', 'From → to', 'Outcome', 'Actor', 'Principal', 'Reason', 'Trace', 'Details'];

  function renderTimeline(page, rows, truncated) {
    page.rows = [];
    const seen = new Set();
    const fragment = document.createDocumentFragment();
    for (const entry of rows) {
      const id = String(entry.id);
      if (seen.has(id)) continue;
      seen.add(id);
      page.rowIds.add(id);
      page.rows.push(entry);
      fragment.append(timelineRow(entry));
    }
    // Rows are a grid of divs (ARIA table roles), not a <table>: a table lays out every row
    // before it paints, while these rows skip layout until scrolled into view
    // (content-visibility), so a long timeline costs about what a short one does.
    const body = h('div', { class: 'tl-body', role: 'rowgroup' });
    body.append(fragment); // built off-document, attached once
    const grid = h('div', { class: 'tl', role: 'table', 'aria-label': 'Timeline' },
      h('div', { role: 'rowgroup' },
        h('div', { class: 'tl-row tl-head', role: 'row' }, TIMELINE_HEADERS.map((name) => h('div', { role: 'columnheader' }, name)))),
      body);
    const scroller = h('div', { class: 'timeline-scroll', tabindex: '0', role: 'region', 'aria-label': 'Timeline rows' }, grid);
    fill(sectionBody('timeline'), scroller,
      truncated ? h('p', { class: 'hint' }, `Showing the first ${page.rows.length} rows.`) : null,
      page.rows.length ? null : empty('No rows yet.'));
    // Follow the newest row unless the person scrolled up (rows growing as they are drawn
    // also fire scroll events, so only a move upwards counts).
    scroller.addEventListener('scroll', () => {
      if (scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60) page.followTimeline = true;
      else if (scroller.scrollTop < page.autoScrollTop - 4) page.followTimeline = false;
    }, { passive: true });
    // Rows off screen have estimated heights until drawn, so the end moves as the last rows are
    // laid out: while following, every change of size scrolls to the end again.
    const observer = new ResizeObserver(() => { if (page.followTimeline) scrollToEnd(page, scroller); });
    observer.observe(grid);
    page.signal.addEventListener('abort', () => observer.disconnect(), { once: true });
    if (page.followTimeline) scrollToEnd(page, scroller); // the newest rows are the interesting ones
    updateTimelineCount(page);
    renderSection(page, 'decisions');
  }

  function flushTimeline(page) {
    page.flushTimer = null;
    const entries = page.queue.splice(0);
    if (!entries.length) return;
    const scroller = $('#timeline .timeline-scroll');
    const body = scroller && scroller.querySelector('.tl-body');
    if (!body) {
      // The timeline route failed earlier: the stream's rows rebuild it.
      renderTimeline(page, page.rows.concat(entries), false);
      return;
    }
    const fragment = document.createDocumentFragment();
    entries.forEach((entry) => {
      page.rows.push(entry);
      fragment.append(timelineRow(entry));
    });
    body.append(fragment);
    const placeholder = $('#timeline > .section-body > p.empty');
    if (placeholder) placeholder.remove();
    if (page.followTimeline) scrollToEnd(page, scroller);
    updateTimelineCount(page);
    if (entries.some((entry) => String(entry.event).startsWith('gate'))) renderSection(page, 'decisions');
  }

  function scrollToEnd(page, scroller) {
    scroller.scrollTop = scroller.scrollHeight;
    page.autoScrollTop = scroller.scrollTop;
  }

  function updateTimelineCount(page) {
    $('#timeline-count').textContent = `(${page.rows.length})`;
  }

  function timelineRow(entry) {
    const cell = (className, ...content) => h('div', { role: 'cell', class: className }, content);
    return h('div', { class: 'tl-row', role: 'row', dataset: { rowId: String(entry.id), event: entry.event } },
      cell(null, timeEl(entry.created_at)),
      cell('mono', entry.event),
      cell(null, transitionText(entry)),
      cell(`outcome-${safeClass(entry.outcome)}`, entry.outcome),
      cell(null, entry.actor),
      cell(null, entry.principal_name || ''),
      cell('wrap', entry.reason || guardText(entry.meta)),
      cell(null, traceCell(entry.meta)),
      cell(null, metaDetails(entry.meta)));
  }

  function transitionText(entry) {
    const from = entry.from_status;
    const to = entry.to_status;
    // A refused or ignored event names where it would have gone; it did not go there.
    const arrow = entry.outcome === 'rejected' || entry.outcome === 'ignored' ? ' ↛ ' : ' → ';
    if (from && to) return from === to ? from : `${from}${arrow}${to}`;
    return to || from || '';
  }

  // Why a guard refused an event (a refused row has no reason of its own).
  function guardText(meta) {
    const failures = meta && Array.isArray(meta.guard_failures) ? meta.guard_failures : [];
    return failures.map((f) => `${f.field}: ${f.message}`).join('; ');
  }

  // Where a trace is shown: `server.trace_url` from /ui/settings.json, `{trace_id}` replaced;
  // without it the id is shown, not linked.
  let traceUrl = null;

  async function loadSettings() {
    try {
      const response = await fetch('/ui/settings.json', { headers: { Accept: 'application/json' } });
      if (response.ok) traceUrl = (await response.json()).trace_url || null;
    } catch (_) {
      traceUrl = null; // the console works without it
    }
  }

  function traceId(meta) {
    if (!meta || typeof meta !== 'object') return null;
    if (typeof meta.trace_id === 'string' && meta.trace_id) return meta.trace_id;
    const parts = typeof meta.traceparent === 'string' ? meta.traceparent.split('-') : [];
    return parts.length >= 2 && parts[1] ? parts[1] : null;
  }

  function traceCell(meta) {
    const id = traceId(meta);
    if (!id) return '';
    if (!traceUrl) return h('span', { class: 'mono', title: `trace ${id}` }, id.slice(0, 8));
    const href = traceUrl.split('{trace_id}').join(encodeURIComponent(id));
    return h('a', { class: 'mono trace-link', href, target: '_blank', rel: 'noopener noreferrer', title: `trace ${id}` }, id.slice(0, 8));
  }

  // The row's meta, without the trace ids already shown, as JSON when opened (built lazily:
  // hundreds of rows should not each pay for JSON.stringify up front).
  function metaDetails(meta) {
    if (!meta || typeof meta !== 'object') return '';
    const rest = Object.keys(meta).filter((k) => k !== 'trace_id' && k !== 'traceparent');
    if (!rest.length) return '';
    const pre = h('pre');
    const details = h('details', { class: 'meta' }, h('summary', null, rest.slice(0, 3).join(', ') + (rest.length > 3 ? '…' : '')), pre);
    details.addEventListener('toggle', () => {
      if (details.open && !pre.textContent) {
        const shown = {};
        rest.forEach((k) => { shown[k] = meta[k]; });
        pre.textContent = JSON.stringify(shown, null, 2);
      }
    });
    return details;
  }

  // --- Plan -------------------------------------------------------------------------------
  function renderPlans(page, data) {
    const items = data.items || [];
    if (!items.length) return empty('No plan proposed yet.');
    const currentId = page.item && page.item.current_plan_id;
    const current = items.find((p) => p.id === currentId) || items[items.length - 1];
    const earlier = items.filter((p) => p !== current).reverse();
    return [
      planView(current, current.id === currentId),
      earlier.length ? h('details', null, h('summary', null, `Earlier plans (${earlier.length})`), earlier.map((p) => planView(p, false))) : null,
    ];
  }

  function planView(record, isCurrent) {
    const plan = record.plan && typeof record.plan === 'object' ? record.plan : {};
    const rollback = plan.rollback && Array.isArray(plan.rollback.steps) ? plan.rollback.steps : [];
    return h('div', { class: 'plan-block', dataset: { planId: record.id } },
      h('h3', null, plan.title || '(untitled plan)', isCurrent ? h('span', { class: 'muted' }, ' · current') : ''),
      keyValues([
        ['risk', plan.risk_score !== undefined ? String(plan.risk_score) : null],
        ['proposed by', record.requested_by],
        ['at', timeEl(record.created_at)],
        ['digest', record.digest ? h('span', { class: 'mono', title: record.digest }, record.digest.slice(0, 12)) : null],
      ]),
      h('h4', null, 'Steps'), stepsTable(plan.steps),
      h('h4', null, 'Rollback'), stepsTable(rollback),
      h('h4', null, 'Verification'), verifyView(plan.verify),
      referencesView(record.references));
  }

  function stepsTable(steps) {
    if (!Array.isArray(steps) || !steps.length) return empty('none');
    return table(['Id', 'Action', 'Params', 'Timeout', 'Retry'], steps.map((step) => h('tr', null,
      h('td', { class: 'mono' }, step.id || ''),
      h('td', { class: 'mono' }, step.action || ''),
      h('td', { class: 'wrap mono' }, step.params !== undefined ? compactJson(step.params) : ''),
      h('td', { class: 'nowrap' }, step.timeout_s !== undefined ? `${step.timeout_s} s` : ''),
      h('td', null, step.retry !== undefined ? String(step.retry) : ''))));
  }

  function verifyView(verify) {
    if (!verify || typeof verify !== 'object') return empty('none');
    const checks = Array.isArray(verify.checks) ? verify.checks : [];
    return [
      keyValues(['window_s', 'interval_s', 'count', 'failure_limit']
        .map((k) => [k, verify[k] !== undefined ? String(verify[k]) : null])),
      checks.length ? table(['Name', 'Source', 'Query', 'Threshold'], checks.map((check) => h('tr', null,
        h('td', null, check.name || ''),
        h('td', null, check.source || ''),
        h('td', { class: 'wrap mono' }, check.query || ''),
        h('td', { class: 'mono' }, check.threshold || '')))) : empty('no checks'),
    ];
  }

  function referencesView(refs) {
    if (!refs || typeof refs !== 'object') return null;
    const runbooks = refs.runbooks || [];
    const past = refs.past_cases || [];
    return [
      h('h4', null, 'References'),
      refs.query ? h('p', { class: 'hint' }, `searched: ${refs.query}`) : null,
      runbooks.length ? h('ul', { class: 'plain' }, runbooks.map(runbookItem)) : empty('No runbooks matched.'),
      past.length ? h('ul', { class: 'plain' }, past.map(pastCaseItem)) : empty('No similar past cases.'),
    ];
  }

  function runbookItem(ref) {
    return h('li', null,
      h('div', { class: 'item-head' },
        h('span', { class: 'chip' }, 'runbook'),
        externalLink(ref.url, ref.title || ref.url),
        ref.heading_path ? h('span', { class: 'muted' }, ref.heading_path) : null,
        h('span', { class: 'hint' }, `${ref.matched_by || ''} · score ${formatScore(ref.score)}`)),
      isHttpUrl(ref.url) ? null : h('div', { class: 'hint mono' }, ref.url || ''),
      ref.excerpt ? h('div', { class: 'excerpt' }, ref.excerpt) : null);
  }

  function pastCaseItem(ref) {
    const href = caseHref(ref.case_id);
    const actions = (steps) => (steps || []).map((s) => s.action + (s.result ? ` (${s.result})` : '')).join(', ');
    return h('li', null,
      h('div', { class: 'item-head' },
        h('span', { class: 'chip' }, 'past case'),
        href ? h('a', { href }, ref.title) : h('span', null, ref.title),
        h('span', null, badge(ref.status)),
        h('span', null, ref.outcome),
        ref.verdict ? h('span', { class: 'muted' }, `verdict ${ref.verdict}`) : null,
        h('span', { class: 'hint' }, `score ${formatScore(ref.score)}`)),
      ref.reason ? h('div', { class: 'excerpt' }, ref.reason) : null,
      keyValues([['steps', actions(ref.plan_steps) || null], ['rollback', actions(ref.rollback_hints) || null]]));
  }

  function formatScore(score) {
    return typeof score === 'number' ? score.toFixed(3) : String(score === undefined ? '' : score);
  }

  // --- Gate decisions ---------------------------------------------------------------------
  function renderDecisions(page, data) {
    const items = data.items || [];
    const notes = page.rows.filter((row) => row.event === 'gate_held' || row.event === 'gate_explanation' ||
      (row.event.startsWith('gate_') && row.outcome === 'rejected'));
    return [
      items.length ? table(['Time', 'Decision', 'By', 'Rule', 'Policy revision', 'Reason'], items.map((d) => h('tr', null,
        h('td', { class: 'nowrap' }, timeEl(d.created_at)),
        h('td', { class: d.decision === 'approved' ? 'ok' : 'bad' }, d.decision),
        h('td', { title: d.decided_by_key || '' }, d.decided_by),
        h('td', { class: 'mono' }, (d.inputs && typeof d.inputs === 'object' && d.inputs.rule) || ''),
        h('td', { class: 'mono' }, d.policy_rev || ''),
        h('td', { class: 'wrap' }, d.reason || '')))) : empty('No gate decision yet.'),
      notes.length ? [h('h3', null, 'At the gate'), h('ul', { class: 'plain' }, notes.map(gateNote))] : null,
    ];
  }

  function gateNote(row) {
    const meta = row.meta || {};
    const explanation = meta.explanation && typeof meta.explanation === 'object' ? meta.explanation : null;
    const label = row.event === 'gate_held' ? 'held for a human' : row.event === 'gate_explanation' ? 'explanation' : `${row.event} refused`;
    return h('li', null,
      h('div', { class: 'item-head' },
        h('span', { class: row.outcome === 'rejected' ? 'bad' : 'warn' }, label),
        timeEl(row.created_at),
        h('span', { class: 'muted' }, row.principal_name || row.actor),
        meta.rule ? h('span', { class: 'chip' }, `rule ${meta.rule}`) : null,
        meta.policy_rev ? h('span', { class: 'hint mono' }, `policy ${meta.policy_rev}`) : null),
      row.reason || guardText(meta) ? h('div', { class: 'excerpt' }, row.reason || guardText(meta)) : null,
      explanation ? explanationView(explanation) : null);
  }

  function explanationView(e) {
    const list = (items) => (Array.isArray(items) && items.length ? h('ul', null, items.map((x) => h('li', null, String(x)))) : null);
    return h('div', { class: 'excerpt' },
      e.summary ? h('p', null, e.summary) : null,
      Array.isArray(e.risks) && e.risks.length ? [h('strong', null, 'Risks'), list(e.risks)] : null,
      e.blast_radius ? keyValues([['blast radius', e.blast_radius]]) : null,
      e.rollback ? keyValues([['rollback', e.rollback]]) : null,
      Array.isArray(e.watch) && e.watch.length ? [h('strong', null, 'Watch'), list(e.watch)] : null);
  }

  // --- Executions -------------------------------------------------------------------------
  function renderExecutions(page, data) {
    const items = data.items || [];
    if (!items.length) return empty('Nothing has run yet.');
    return table(['Time', 'Event', 'Step', 'Status', 'Duration', 'Output / results'], items.map(executionRow));
  }

  function executionRow(row) {
    const meta = row.meta || {};
    const isStep = row.event === 'step_result';
    const status = isStep ? meta.status : row.outcome;
    const step = isStep ? [meta.step, meta.action ? ` (${meta.action})` : '', meta.phase && meta.phase !== 'run' ? ` ${meta.phase}` : '',
      meta.attempt > 1 ? ` try ${meta.attempt}` : ''].join('') : '';
    return h('tr', { dataset: { rowId: String(row.id) } },
      h('td', { class: 'nowrap' }, timeEl(row.created_at)),
      h('td', { class: 'mono' }, row.event),
      h('td', { class: 'mono' }, step),
      h('td', { class: statusClass(status) }, status || ''),
      h('td', { class: 'nowrap' }, typeof meta.duration_ms === 'number' ? `${meta.duration_ms} ms` : ''),
      h('td', { class: 'wrap' },
        row.reason ? h('div', null, row.reason) : null,
        meta.error ? h('div', { class: 'bad' }, String(meta.error)) : null,
        meta.output ? h('details', null, h('summary', null, 'output'), h('pre', null, String(meta.output))) : null,
        Array.isArray(meta.results) ? h('ul', null, meta.results.map((r) => h('li', null,
          h('span', { class: 'mono' }, r.step), ' ', h('span', { class: statusClass(r.status) }, r.status), r.detail ? ` — ${r.detail}` : ''))) : null));
  }

  function statusClass(status) {
    if (['succeeded', 'applied', 'pass', 'passed'].includes(status)) return 'ok';
    if (['failed', 'rejected', 'fail', 'ignored'].includes(status)) return 'bad';
    if (['inconclusive', 'skipped', 'planned'].includes(status)) return 'warn';
    return '';
  }

  // --- Verifications ----------------------------------------------------------------------
  function renderVerifications(page, data) {
    const items = data.items || [];
    if (!items.length) return empty('No verdict yet.');
    return h('ul', { class: 'plain' }, items.map((row) => {
      const meta = row.meta || {};
      const checks = Array.isArray(meta.checks) ? meta.checks : [];
      const verdict = meta.verdict || (row.event === 'verify_pass' ? 'pass' : 'fail');
      return h('li', { dataset: { rowId: String(row.id) } },
        h('div', { class: 'item-head' },
          h('span', { class: statusClass(verdict) }, verdict),
          h('span', { class: 'mono' }, row.event),
          timeEl(row.created_at),
          row.outcome !== 'applied' ? h('span', { class: statusClass(row.outcome) }, row.outcome) : null),
        row.reason ? h('div', { class: 'excerpt' }, row.reason) : null,
        checks.length ? table(['Check', 'Query', 'Threshold', 'Verdict', 'Measurements'], checks.map(checkRow)) : null);
    }));
  }

  function checkRow(check) {
    const measurements = Array.isArray(check.measurements) ? check.measurements : [];
    return h('tr', null,
      h('td', null, check.name || '', check.source ? h('div', { class: 'hint' }, check.source) : null),
      h('td', { class: 'wrap mono' }, check.query || ''),
      h('td', { class: 'mono' }, check.threshold || ''),
      h('td', { class: statusClass(check.verdict) }, check.verdict || ''),
      h('td', null, measurements.map((m) => h('span', {
        class: `chip ${m.passed === true ? 'ok' : m.passed === false ? 'bad' : 'warn'}`,
        title: [formatTime(m.at), m.note].filter(Boolean).join(' — '),
      }, m.value === null || m.value === undefined ? 'no value' : String(m.value))),
      check.reason ? h('div', { class: 'hint' }, check.reason) : null));
  }

  // --- Evidence ---------------------------------------------------------------------------
  function renderEvidence(page, data) {
    const items = data.items || [];
    if (!items.length) return empty('No evidence yet.');
    return h('ul', { class: 'plain' }, items.map((ev) => {
      const target = isHttpUrl(ev.href) ? ev.href : isHttpUrl(ev.url) ? ev.url : null;
      const locator = ev.locator && typeof ev.locator === 'object' ? ev.locator : null;
      return h('li', { dataset: { evidenceId: ev.id } },
        h('div', { class: 'item-head' },
          h('span', { class: 'chip' }, ev.kind),
          target ? externalLink(target, ev.title) : h('span', null, ev.title),
          h('span', { class: 'muted' }, ev.created_by),
          timeEl(ev.created_at)),
        locator ? h('div', { class: 'kv' }, h('span', { class: 'k' }, locator.system),
          h('code', null, locator.query), locator.dataset ? ` (${locator.dataset})` : '',
          locator.from || locator.to ? h('span', { class: 'hint' }, ` ${formatTime(locator.from)} – ${formatTime(locator.to)}`) : '') : null,
        !target && ev.url ? h('div', { class: 'hint mono' }, ev.url) : null,
        ev.ref ? h('div', { class: 'hint mono' }, `ref ${compactJson(ev.ref)}`) : null,
        ev.note ? h('div', { class: 'excerpt' }, ev.note) : null);
    }));
  }

  function submitEvidence() {
    const page = state.page;
    if (!page || page.name !== 'case' || !page.item) return;
    const value = (id) => $(`#${id}`).value.trim();
    const body = { kind: value('evidence-kind'), title: value('evidence-title') };
    const url = value('evidence-url');
    const system = value('evidence-system');
    if (!body.title) return refuseInput('Evidence needs a title.', 'evidence-title');
    if (url && !isHttpUrl(url)) return refuseInput('The URL must start with http:// or https://.', 'evidence-url');
    if (system) {
      if (!value('evidence-query')) return refuseInput('A locator needs its query.', 'evidence-query');
      body.locator = { system, query: value('evidence-query') };
      if (value('evidence-dataset')) body.locator.dataset = value('evidence-dataset');
      if (url) body.url = url;
    } else if (url) {
      body.url = url;
    } else {
      return refuseInput('Give a URL, or a locator system and query.', 'evidence-url');
    }
    if (value('evidence-note')) body.note = value('evidence-note');
    return perform(page, $('#evidence-submit'), {
      label: 'Add evidence',
      send: (key) => api('POST', `/v1/cases/${page.caseId}/evidence`,
        { body, headers: { 'Idempotency-Key': key }, signal: page.signal }),
      onOk: (result) => {
        $('#evidence-form').reset();
        $('#evidence-add').open = false;
        showNotice('ok', result.status === 201 ? 'Evidence added.' : 'That evidence was there already.');
        loadSection(page, 'evidence');
      },
    });
  }

  function refuseInput(message, fieldId) {
    showNotice('error', message);
    $(`#${fieldId}`).focus();
  }

  // --- Findings ---------------------------------------------------------------------------
  function renderFindings(page, data) {
    const items = data.items || [];
    const summaries = data.summaries || [];
    if (!items.length && !summaries.length) return empty('No findings yet.');
    return [
      summaries.map((s) => h('div', { class: 'plan-block' },
        h('h3', null, s.headline),
        keyValues([['suspected cause', s.suspected_cause],
          ['confidence', typeof s.confidence === 'number' ? `${Math.round(s.confidence * 100)} %` : null],
          ['model', s.model], ['at', timeEl(s.created_at)]]))),
      items.length ? table(['Kind', 'Finding', 'Score', 'Evidence', 'Detail'], items.map((f) => h('tr', { dataset: { runId: f.run_id } },
        h('td', { class: 'mono' }, f.kind),
        h('td', { class: 'wrap' }, f.title),
        h('td', null, formatScore(f.score)),
        h('td', { class: 'wrap' }, (f.evidence || []).map((e) => e && e.title).filter(Boolean).join('; ')),
        h('td', null, f.detail && Object.keys(f.detail).length
          ? h('details', null, h('summary', null, 'detail'), h('pre', null, JSON.stringify(f.detail, null, 2))) : '')))) : null,
    ];
  }

  // ---------------------------------------------------------------------------------------
  // Actions: transitions and commands. One Idempotency-Key per click, reused by its retry.
  // ---------------------------------------------------------------------------------------
  function onActionClick(button) {
    const page = state.page;
    if (!page || page.name !== 'case' || !page.item) return;
    const event = button.dataset.action;
    const action = ACTIONS[event];
    if (!action) return;
    const reasonInput = $('#action-reason');
    const reason = reasonInput.value.trim();
    if (action.reason && !reason) {
      showNotice('error', `${action.label} needs a reason.`, { detail: 'Type it in the Reason field above the buttons.' });
      reasonInput.focus();
      return;
    }
    const body = { event, actor: state.me.name };
    if (reason) body.reason = reason;
    if (event === 'gate_approved') body.decision = {};
    const version = page.item.version; // the version the person saw is the one they act on
    perform(page, button, {
      label: action.label,
      send: (key) => api('PATCH', `/v1/cases/${page.caseId}/transition`, {
        body,
        headers: { 'If-Match': `"${version}"`, 'Idempotency-Key': key },
        signal: page.signal,
      }),
      onOk: (result) => {
        reasonInput.value = '';
        applyCase(page, result.data);
        showNotice('ok', `${action.label}: done.`, { detail: `The case is now ${result.data.status} (version ${result.data.version}).` });
        scheduleCaseRefresh(page);
      },
    });
  }

  function onCommandClick(button) {
    const page = state.page;
    if (!page || page.name !== 'case' || !page.item) return;
    const command = COMMANDS[button.dataset.command];
    if (!command) return;
    const body = { case_id: page.caseId, actor: state.me.name };
    perform(page, button, {
      label: command.label,
      pending: `${command.label}: sent, waiting for the worker…`,
      send: (key) => api('POST', command.path, { body, headers: { 'Idempotency-Key': key }, signal: page.signal }),
      onOk: (result) => {
        const answer = result.data || {};
        if (answer.case) applyCase(page, answer.case);
        showNotice('ok', `${command.label}: ${answer.status || 'sent'}.`, { detail: commandOutcome(answer) });
        scheduleCaseRefresh(page);
      },
    });
  }

  function commandOutcome(answer) {
    const status = answer.case ? answer.case.status : '?';
    if (answer.status === 'applied') return `The case moved on: it is now ${status}.`;
    if (answer.status === 'answered' && answer.answer) {
      const row = answer.answer;
      return `The worker answered ${row.event}${row.reason ? `: ${row.reason}` : ''} (the case stays ${status}).`;
    }
    if (answer.status === 'pending') return `No answer yet; the worker is on it and the timeline will show it. The case is ${status}.`;
    return `The case is ${status}.`;
  }

  // Send one click's request: its button is disabled while it is in flight (a double click
  // sends once), its outcome goes to #notice, and a retry sends the same Idempotency-Key.
  function perform(page, button, { label, pending, send, onOk }) {
    const key = uuid();
    const id = buttonKey(button);
    const attempt = async () => {
      if (page.inflight.has(id) || !page.alive) return;
      const hadFocus = document.activeElement === button;
      page.inflight.add(id);
      button.disabled = true;
      showNotice('info', pending || `${label}…`);
      const result = await send(key);
      page.inflight.delete(id);
      if (result.aborted || !page.alive) return;
      button.disabled = false;
      if (result.ok) onOk(result);
      else reportFailure(page, label, result, attempt);
      if (hadFocus) keepKeyboardNear(button);
    };
    return attempt();
  }

  // A disabled or hidden button loses the focus: give it back, or to the nearest control that
  // is still there, so a keyboard user is not thrown back to the top of the page.
  function keepKeyboardNear(button) {
    const focused = document.activeElement;
    if (focused && focused !== document.body && focused.offsetParent !== null) return;
    const candidates = [button].concat($$('#actions button'), [$('#new-case'), $('#case-title'), $('#main')]);
    const target = candidates.find((el) => el && !el.disabled && el.offsetParent !== null);
    if (target) target.focus();
  }

  function reportFailure(page, label, result, retry) {
    const problem = result.problem || {};
    const detail = problemText(problem);
    if (page.name === 'case' && (result.status === 409 || result.status === 412)) {
      const reload = h('button', { type: 'button', id: 'reload', onclick: () => { clearNotice(); refreshAll(page); } }, 'Reload');
      // A 409 that names the version on screen is about the request, not about a stale page.
      const shown = page.item && page.item.version;
      if (result.status === 409 && problem.current_version !== undefined && problem.current_version === shown) {
        showNotice('error', `${label} is not possible in ${problem.current_status || page.item.status}.`, { detail, buttons: [reload] });
        return;
      }
      // Someone (or a worker) moved the case since it was read: show the case as it is now.
      showNotice('error', 'The case changed — reload', { detail, buttons: [reload] });
      return;
    }
    const guards = Array.isArray(problem.guard_failures)
      ? problem.guard_failures.map((g) => `${g.guard} (${g.field}): ${g.message}`) : [];
    // Only failures that may pass on a second try offer one: the network, the server, the rate limit.
    const retryable = result.network || result.status === 408 || result.status === 429 || result.status >= 500;
    const buttons = retryable
      ? [h('button', { type: 'button', id: 'retry', onclick: () => retry() }, 'Retry')] : [];
    const title = result.status ? `${label} refused (${result.status}${problem.title ? ` ${problem.title}` : ''}).` : `${label} failed.`;
    showNotice('error', title, { detail, list: guards.length > 1 ? guards : [], buttons });
  }

  // ---------------------------------------------------------------------------------------
  // Wiring: the page's static controls are bound once.
  // ---------------------------------------------------------------------------------------
  function bindStaticHandlers() {
    $('#signin-form').addEventListener('submit', (event) => {
      event.preventDefault(); // form-action 'none': nothing is ever submitted by the browser
      const key = $('#signin-key').value.trim();
      if (!key) {
        showNotice('error', 'Paste an API key first.');
        $('#signin-key').focus();
        return;
      }
      signIn(key);
    });
    $('#signout').addEventListener('click', () => signOut(null));
    window.addEventListener('hashchange', () => {
      state.focusOnRoute = true; // a person navigated: take the keyboard to the new content
      route();
    });

    for (const name of FILTERS) {
      const input = $(`#filter-${name}`);
      const isText = input.tagName === 'INPUT';
      input.addEventListener(isText ? 'input' : 'change', () => onFilterChanged(name, input.value, isText));
    }
    $('#cases').addEventListener('click', onCasesTableClick);
    $('#more').addEventListener('click', () => {
      const page = state.page;
      if (page && page.name === 'list' && page.cursor) loadCases(page, false);
    });
    $('#new-case').addEventListener('click', toggleNewCasePanel);
    $('#new-case-cancel').addEventListener('click', closeNewCasePanel);
    $('#new-case-form').addEventListener('submit', (event) => {
      event.preventDefault();
      submitNewCase();
    });

    for (const button of $$('#actions button[data-action]')) button.addEventListener('click', () => onActionClick(button));
    for (const button of $$('#actions button[data-command]')) button.addEventListener('click', () => onCommandClick(button));
    $('#evidence-form').addEventListener('submit', (event) => {
      event.preventDefault();
      submitEvidence();
    });
  }

  async function boot() {
    bindStaticHandlers();
    await loadSettings();
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) restoreSession(saved);
    else showSignIn();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
