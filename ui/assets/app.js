// corral dashboard: a thin client of the HTTP API (docs/ui.md).
// No framework and no build step: the DOM is built with el(), text is
// always set as text (never as HTML), and live state comes from
// GET /v1/events read as a stream by fetch (EventSource cannot send the
// Authorization header).
'use strict';

const TOKEN_KEY = 'corral.token';
const EXEC_PROTOCOL = 'corral.exec.v1';
const WS_TOKEN_PREFIX = 'corral.bearer.';
const TERMINAL = new Set(['TERMINATED', 'ERROR', 'CANCELLED']);
const SESSION_STATUSES = ['PENDING', 'SCHEDULED', 'PREPARING', 'PULLING', 'RUNNING', 'RUNNING_DEGRADED',
  'RESTARTING', 'TERMINATING', 'TERMINATED', 'ERROR', 'CANCELLED'];

// S is the dashboard's whole state: what the API said, kept current by events.
const S = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  me: null,            // the caller's key (GET /v1/keys/{ak}/status)
  sessions: new Map(), // id -> session
  agents: new Map(),   // id -> agent
  kernels: new Map(),  // id -> kernel (of sessions the user opened)
  index: 0,            // the last event index applied
  gen: 0,              // bumped at login/logout: stale loops stop
  abort: null,         // the open event stream's AbortController
  page: null,          // the page on screen: {name, update(topics), close()}
  loaded: false,
};

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// swap replaces container's children with nodes unless they render the
// same: a redraw on every event must not replace the element under the
// user's pointer (a click needs its press and release on one element).
function swap(container, ...items) {
  const nodes = items.flat().filter((n) => n !== '' && n !== null && n !== undefined && n !== false)
    .map((n) => (n instanceof Node ? n : document.createTextNode(String(n))));
  const old = container.childNodes;
  if (old.length === nodes.length && nodes.every((n, i) => n.isEqualNode(old[i]))) return;
  container.replaceChildren(...nodes);
}

const $ = (sel) => document.querySelector(sel);
const short = (id) => (id || '').slice(0, 8);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function statusTag(s, cls) {
  return el('span', { class: 'status ' + (cls || s || ''), text: s || '' });
}

function fmtBytes(n) {
  n = Number(n) || 0;
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + u[i];
}

function fmtSlot(name, q) {
  if (name === 'mem' || name.endsWith('.mem')) return fmtBytes(q);
  const n = Number(q) || 0;
  return Number.isInteger(n) ? String(n) : n.toFixed(2);
}

function fmtTime(t) {
  if (!t || t.startsWith('0001-')) return '';
  const d = new Date(t);
  return isNaN(d) ? t : d.toLocaleString();
}

// parseSize reads "512M", "2GiB", "1048576" as bytes (null when malformed).
function parseSize(s) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$/i.exec(s || '');
  if (!m) return null;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()];
  return Math.round(Number(m[1]) * mult);
}

// splitWords splits a command line as a POSIX shell would split words:
// quotes group, a backslash escapes (no expansion of any kind).
function splitWords(s) {
  const out = [];
  let cur = '', inWord = false, q = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q === "'") { if (c === "'") q = ''; else cur += c; continue; }
    if (q === '"') {
      if (c === '"') q = '';
      else if (c === '\\' && i + 1 < s.length && '"\\$`'.includes(s[i + 1])) cur += s[++i];
      else cur += c;
      continue;
    }
    if (c === "'" || c === '"') { q = c; inWord = true; continue; }
    if (c === '\\' && i + 1 < s.length) { cur += s[++i]; inWord = true; continue; }
    if (/\s/.test(c)) { if (inWord) { out.push(cur); cur = ''; inWord = false; } continue; }
    cur += c; inWord = true;
  }
  if (q) throw new Error('unterminated ' + q + ' quote in the command');
  if (inWord) out.push(cur);
  return out;
}

let flashTimer = null;
function flash(msg, info) {
  const f = $('#flash');
  f.textContent = msg;
  f.className = info ? 'info' : '';
  f.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { f.hidden = true; }, info ? 4000 : 10000);
}

// ---------- the API ----------

class APIError extends Error {
  constructor(status, msg) { super(msg); this.status = status; }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Bearer ' + S.token } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!r.ok) {
    const msg = (data && data.error) || (r.status + ' ' + r.statusText);
    if (r.status === 401 && S.me) logout('the server refused the token: ' + msg);
    throw new APIError(r.status, msg);
  }
  return { data, index: Number(r.headers.get('X-Corral-Index') || 0) };
}

// newer reports whether b (from the API or an event) is at least as new as
// what is held for the same key.
function newer(held, b) {
  return !held || (b.modify_index || 0) >= (held.modify_index || 0);
}

// loadState reads the sessions and agents, and returns the index to follow
// events from (the older of the two reads: events already reflected are
// skipped by their modify_index).
async function loadState() {
  const [ss, ag] = await Promise.all([api('GET', '/v1/sessions'), api('GET', '/v1/agents')]);
  S.sessions = new Map((ss.data || []).map((s) => [s.id, s]));
  S.agents = new Map((ag.data || []).map((a) => [a.id, a]));
  S.loaded = true;
  return Math.min(ss.index || 0, ag.index || 0);
}

// ---------- live events ----------

function setLive(on, why) {
  const l = $('#live');
  l.className = 'live ' + (on ? 'on' : 'off');
  l.textContent = on ? 'live' : 'offline';
  l.title = why || 'event stream';
}

// applyEvent folds one event into S; it returns the topic it touched, or ''.
function applyEvent(e) {
  const p = e.payload;
  let map = null;
  if (e.topic === 'session') map = S.sessions;
  else if (e.topic === 'node') map = S.agents;
  else if (e.topic === 'kernel') map = S.kernels;
  else return '';
  if (e.type === 'deleted') { map.delete(e.key); return e.topic; }
  if (e.topic === 'kernel' && !S.kernels.has(e.key) && !S.sessions.has(p.session_id)) return '';
  const held = map.get(e.key);
  if (held && (held.modify_index || 0) >= e.index) return ''; // already in the view
  if (newer(held, p)) map.set(e.key, p);
  return e.topic;
}

let pendingTopics = new Set();
let renderQueued = false;
function queueUpdate(topics) {
  for (const t of topics) pendingTopics.add(t);
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const t = pendingTopics;
    pendingTopics = new Set();
    if (S.page && S.page.update) S.page.update(t);
  });
}

// follow reads GET /v1/events as server-sent events, resuming from the
// last index it applied when the stream breaks, and reloading the state
// when the server no longer holds the events it needs (410).
async function follow(gen) {
  let backoff = 500;
  while (gen === S.gen) {
    const ctl = new AbortController();
    S.abort = ctl;
    let gone = false;
    try {
      const r = await fetch('/v1/events?index=' + S.index, {
        headers: { Authorization: 'Bearer ' + S.token, Accept: 'text/event-stream' }, signal: ctl.signal,
      });
      if (r.status === 401) { logout('the server refused the token'); return; }
      if (r.status === 410) {
        gone = true;
      } else if (!r.ok || !r.body) {
        throw new Error('events: HTTP ' + r.status);
      } else {
        setLive(true);
        backoff = 500;
        gone = await readSSE(r.body.getReader(), gen);
      }
    } catch (e) {
      if (gen !== S.gen) return;
    }
    if (gen !== S.gen) return;
    setLive(false, gone ? 'reloading the state' : 'reconnecting');
    if (gone) {
      try {
        S.index = await loadState();
        queueUpdate(['session', 'node', 'kernel', 'reload']);
        continue;
      } catch (e) { /* retried below */ }
    }
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

// readSSE parses the stream until it ends; it reports whether the server
// said the events are gone (event: error).
async function readSSE(reader, gen) {
  const dec = new TextDecoder();
  let buf = '';
  let ev = { event: '', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== S.gen) return false;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      let line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line.endsWith('\r')) line = line.slice(0, -1);
      if (line === '') {
        if (ev.data.length) {
          const data = JSON.parse(ev.data.join('\n'));
          if (ev.event === 'error') { flash(data.error || 'event stream error'); return true; }
          const touched = new Set();
          for (const e of data.events || []) {
            const t = applyEvent(e);
            if (t) touched.add(t);
          }
          S.index = Math.max(S.index, data.index || 0);
          if (touched.size) queueUpdate(touched);
        }
        ev = { event: '', data: [] };
        continue;
      }
      if (line[0] === ':') continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let val = c < 0 ? '' : line.slice(c + 1);
      if (val[0] === ' ') val = val.slice(1);
      if (field === 'data') ev.data.push(val);
      else if (field === 'event') ev.event = val;
    }
  }
}

// ---------- login ----------

async function login(token) {
  S.token = token.trim();
  const ak = S.token.split('.')[0];
  if (!/^AK[0-9A-F]+$/.test(ak) || !S.token.includes('.')) throw new Error('a token looks like AK….SECRET (corral dev writes it to ~/.corral/token)');
  const r = await fetch('/v1/keys/' + encodeURIComponent(ak) + '/status', { headers: { Authorization: 'Bearer ' + S.token } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  S.me = body.key;
  sessionStorage.setItem(TOKEN_KEY, S.token);
  S.gen++;
  S.index = await loadState();
  follow(S.gen);
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  $('#nav-admin').hidden = !S.me.admin;
  $('#who').textContent = S.me.user + (S.me.admin ? ' (admin)' : '');
}

function logout(why) {
  S.gen++;
  if (S.abort) S.abort.abort();
  if (S.page && S.page.close) S.page.close();
  S.page = null;
  S.token = '';
  S.me = null;
  S.loaded = false;
  S.sessions.clear(); S.agents.clear(); S.kernels.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#who').textContent = '';
  setLive(false);
  if (why) flash(why);
  location.hash = '#/login';
  route();
}

function pageLogin(main) {
  const input = el('input', { type: 'password', id: 'token', autocomplete: 'off', placeholder: 'AK….SECRET', required: true });
  const msg = el('p', { class: 'muted' });
  const form = el('form', { class: 'card login', id: 'login-form' },
    el('h1', { text: 'Log in to corral' }),
    el('label', {}, 'Access token', input),
    el('p', { class: 'muted', text: 'The token is kept in this tab only (sessionStorage) and sent as a bearer token to the API.' }),
    el('button', { class: 'primary', type: 'submit', text: 'Log in' }), msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    msg.textContent = 'Checking…';
    try {
      await login(input.value);
      location.hash = '#/nodes';
    } catch (e) {
      S.token = '';
      msg.textContent = e.message;
    }
  });
  main.append(form);
  input.focus();
  return {};
}

// ---------- nodes ----------

function slotRows(a) {
  const names = Object.keys(a.capacity || {}).sort((x, y) => (x === 'cpu' ? -1 : y === 'cpu' ? 1 : x.localeCompare(y)));
  return names.map((n) => {
    const cap = Number(a.capacity[n]) || 0;
    const used = Number((a.occupied || {})[n]) || 0;
    const pct = cap > 0 ? Math.min(100, (100 * used) / cap) : 0;
    const bar = el('div', { class: 'bar', title: pct.toFixed(0) + '%' }, el('span'));
    bar.firstChild.style.width = pct + '%';
    return el('div', { class: 'slot' }, el('code', { text: n }), ' ',
      fmtSlot(n, used) + ' used / ' + fmtSlot(n, cap - used) + ' free of ' + fmtSlot(n, cap), bar);
  });
}

function gpuList(a) {
  const devs = (a.gpus && a.gpus.devices) || [];
  if (!devs.length) return el('span', { class: 'muted', text: 'none' });
  return el('div', {}, devs.map((g) => el('div', { class: 'gpu' },
    el('code', { text: 'GPU' + g.index }), ' ', g.name + ' ' + fmtBytes(g.memory_bytes) + ' ',
    g.util_percent + '% util, ' + fmtBytes(g.memory_used_bytes) + ' used ',
    (a.gpu_holders || {})[g.uuid] ? el('span', { class: 'tag', text: 'held by ' + short(a.gpu_holders[g.uuid]) }) : '',
    g.mig_mode ? el('span', { class: 'tag', text: 'MIG ×' + (g.mig || []).length }) : '',
    g.unhealthy ? statusTag('unhealthy: ' + g.unhealthy, 'unhealthy') : statusTag('healthy'))));
}

function pageNodes(main) {
  main.append(el('h1', { text: 'Nodes' }));
  const body = el('div', { id: 'nodes' });
  main.append(body);
  const draw = () => {
    const agents = [...S.agents.values()].sort((a, b) => a.name.localeCompare(b.name));
    if (!agents.length) { swap(body, el('p', { class: 'muted', text: 'No agents have joined yet.' })); return; }
    const rows = agents.map((a) => {
      const health = [];
      for (const [d, why] of Object.entries(a.unhealthy_drivers || {})) health.push(statusTag('driver ' + d + ': ' + why, 'unhealthy'));
      const actions = [];
      if (S.me.admin) {
        if (a.drain) actions.push(el('button', { type: 'button', 'data-action': 'eligible', onclick: () => nodeAction(a, 'eligible') }, 'Make eligible'));
        else actions.push(el('button', { type: 'button', 'data-action': 'drain', onclick: () => nodeAction(a, 'drain') }, 'Drain'));
      }
      return el('tr', { 'data-agent': a.id },
        el('td', {}, el('strong', { text: a.name }), el('div', { class: 'muted mono', text: short(a.id) })),
        el('td', {}, statusTag(a.status), a.drain ? [' ', statusTag('draining', 'drain')] : '',
          a.status_info ? el('div', { class: 'muted', text: a.status_info }) : '', health),
        el('td', { text: a.resource_group }),
        el('td', {}, (a.drivers || []).map((d) => el('span', { class: 'tag', text: d }))),
        el('td', {}, slotRows(a)),
        el('td', {}, gpuList(a)),
        el('td', { class: 'mono', text: a.version || '' }),
        el('td', {}, actions));
    });
    swap(body, el('table', {},
      el('thead', {}, el('tr', {}, ['Node', 'Status / health', 'Group', 'Drivers', 'Slots', 'GPUs', 'Version', ''].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows)));
  };
  draw();
  return { update: (t) => { if (t.has('node') || t.has('reload')) draw(); } };
}

async function nodeAction(a, what) {
  try {
    await api('POST', '/v1/agents/' + encodeURIComponent(a.id) + '/' + what);
    flash((what === 'drain' ? 'Draining ' : 'Eligible again: ') + a.name, true);
  } catch (e) { flash(what + ' ' + a.name + ': ' + e.message); }
}

// ---------- sessions ----------

function hashQuery() {
  const q = location.hash.split('?')[1] || '';
  return new URLSearchParams(q);
}

// confirmButton is a button that asks for a second click (no modal dialogs).
function confirmButton(label, action) {
  const b = el('button', { type: 'button', class: 'danger', text: label });
  let armed = false;
  b.addEventListener('click', async () => {
    if (!armed) {
      armed = true;
      b.textContent = 'Confirm ' + label.toLowerCase();
      setTimeout(() => { armed = false; b.textContent = label; }, 4000);
      return;
    }
    b.disabled = true;
    try { await action(); } finally { b.disabled = false; armed = false; b.textContent = label; }
  });
  return b;
}

async function destroySession(s) {
  try {
    await api('DELETE', '/v1/sessions/' + encodeURIComponent(s.id));
    flash('Destroying session ' + (s.name || short(s.id)), true);
  } catch (e) { flash('destroy ' + short(s.id) + ': ' + e.message); }
}

function pageSessions(main) {
  const q = hashQuery();
  const status = el('select', { name: 'status', id: 'f-status' }, el('option', { value: '', text: 'any status' }),
    el('option', { value: 'active', text: 'not ended' }),
    SESSION_STATUSES.map((s) => el('option', { value: s, text: s })));
  status.value = q.get('status') || '';
  const user = el('input', { name: 'user', id: 'f-user', placeholder: 'owner', value: q.get('user') || '' });
  const group = el('input', { name: 'group', id: 'f-group', placeholder: 'resource group', value: q.get('group') || '' });
  const form = el('form', { class: 'filters', id: 'session-filters' },
    el('label', {}, 'Status', status), el('label', {}, 'User', user), el('label', {}, 'Group', group),
    el('a', { href: '#/new' }, el('button', { type: 'button', class: 'primary', text: 'New session' })));
  const apply = () => {
    const p = new URLSearchParams();
    if (status.value) p.set('status', status.value);
    if (user.value.trim()) p.set('user', user.value.trim());
    if (group.value.trim()) p.set('group', group.value.trim());
    history.replaceState(null, '', '#/sessions' + (p.toString() ? '?' + p : ''));
    draw();
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); apply(); });
  form.addEventListener('input', apply);
  form.addEventListener('change', apply);
  const body = el('div', { id: 'sessions' });
  main.append(el('h1', { text: 'Sessions' }), form, body);
  const draw = () => {
    const st = status.value, u = user.value.trim(), g = group.value.trim();
    const list = [...S.sessions.values()].filter((s) =>
      (!st || (st === 'active' ? !TERMINAL.has(s.status) : s.status === st)) &&
      (!u || (s.owner || '') === u) && (!g || s.resource_group === g))
      .sort((a, b) => (b.create_index || 0) - (a.create_index || 0));
    if (!list.length) { swap(body, el('p', { class: 'muted', text: 'No sessions match.' })); return; }
    swap(body, el('table', {},
      el('thead', {}, el('tr', {}, ['ID', 'Name', 'Type', 'Status', 'Result', 'Owner', 'Group', 'Created', 'Why', ''].map((h) => el('th', { text: h })))),
      el('tbody', {}, list.map((s) => el('tr', { 'data-session': s.id },
        el('td', {}, el('a', { href: '#/session/' + s.id, class: 'mono', text: short(s.id) })),
        el('td', { text: s.name || '' }),
        el('td', { text: s.type }),
        el('td', {}, statusTag(s.status)),
        el('td', {}, s.result && s.result !== 'UNDEFINED' ? statusTag(s.result) : ''),
        el('td', { text: s.owner || '' }),
        el('td', { text: s.resource_group }),
        el('td', { text: fmtTime(s.created_at) }),
        el('td', { class: 'muted', text: s.status_info || '' }),
        el('td', {}, TERMINAL.has(s.status) ? '' : confirmButton('Destroy', () => destroySession(s))))))));
  };
  draw();
  return { update: (t) => { if (t.has('session') || t.has('reload')) draw(); } };
}

// ---------- one session ----------

function pageSession(main, id) {
  let closed = false;
  const info = el('div', { class: 'card', id: 'session-info' }, el('p', { class: 'muted', text: 'Loading…' }));
  const kernels = el('div', { id: 'kernels' });
  const history = el('div', { id: 'history' });
  const apps = el('div', { id: 'apps' });
  const kernelSel = el('select', { id: 'log-kernel' });
  const logs = el('pre', { class: 'logs', id: 'logs' });
  const logState = { kernel: '', out: 0, err: 0, busy: false, again: false, timer: null };
  const term = terminal(id);
  main.append(el('h1', {}, 'Session ', el('span', { class: 'mono', id: 'session-title', text: short(id) })), info,
    el('h2', { text: 'Kernels' }), kernels,
    el('h2', {}, 'Logs ', kernelSel), logs,
    el('div', { class: 'grid' },
      el('div', {}, el('h2', { text: 'Status history' }), history),
      el('div', {}, el('h2', { text: 'Service ports' }), apps)),
    el('h2', { text: 'Terminal' }), term.node);

  const session = () => S.sessions.get(id);
  const myKernels = () => [...S.kernels.values()].filter((k) => k.session_id === id).sort((a, b) => (a.idx || 0) - (b.idx || 0) || a.role.localeCompare(b.role));

  const drawInfo = () => {
    const s = session();
    if (!s) { info.replaceChildren(el('p', { class: 'muted', text: 'No such session (or it was garbage-collected).' })); return; }
    $('#session-title').textContent = (s.name ? s.name + ' ' : '') + short(s.id);
    swap(info, el('dl', { class: 'kv' },
      el('dt', { text: 'ID' }), el('dd', { class: 'mono', text: s.id }),
      el('dt', { text: 'Status' }), el('dd', { id: 'session-status' }, statusTag(s.status), ' ', s.result && s.result !== 'UNDEFINED' ? statusTag(s.result) : ''),
      el('dt', { text: 'Why' }), el('dd', { text: s.status_info || '' }),
      el('dt', { text: 'Type' }), el('dd', { text: s.type + (s.cluster_size > 1 ? ', ' + s.cluster_size + ' kernels (' + (s.cluster_mode || 'single-node') + ')' : '') }),
      el('dt', { text: 'Owner' }), el('dd', { text: (s.owner || '') + ' (' + (s.access_key || '') + ')' }),
      el('dt', { text: 'Group' }), el('dd', { text: s.resource_group }),
      el('dt', { text: 'Created' }), el('dd', { text: fmtTime(s.created_at) }),
      s.end_reason ? [el('dt', { text: 'Ended' }), el('dd', { text: s.end_reason })] : '',
      s.endpoint ? [el('dt', { text: 'Endpoint' }), el('dd', { text: s.endpoint })] : ''),
    TERMINAL.has(s.status) ? '' : el('div', { class: 'row' }, confirmButton('Destroy', () => destroySession(s))));
  };

  const drawKernels = () => {
    const ks = myKernels();
    swap(kernels, el('table', {},
      el('thead', {}, el('tr', {}, ['Kernel', 'Status', 'Driver', 'Agent', 'Resources', 'GPUs', 'Exit', 'Why'].map((h) => el('th', { text: h })))),
      el('tbody', {}, ks.map((k) => {
        const ag = S.agents.get(k.agent_id);
        return el('tr', { 'data-kernel': k.id },
          el('td', {}, el('strong', { text: k.hostname }), el('div', { class: 'muted mono', text: short(k.id) })),
          el('td', {}, statusTag(k.status)),
          el('td', { text: k.driver + (k.image ? ' ' + k.image : '') }),
          el('td', { text: ag ? ag.name : short(k.agent_id) }),
          el('td', {}, Object.entries(k.resources || {}).map(([n, q]) => el('span', { class: 'tag', text: n + '=' + fmtSlot(n, q) }))),
          el('td', { class: 'mono', text: (k.gpus || []).join(', ') }),
          el('td', { class: 'num', text: k.exit_code === undefined || k.exit_code === null ? '' : String(k.exit_code) }),
          el('td', { class: 'muted', text: k.status_info || '' }));
      }))));
    const names = ks.map((k) => k.hostname);
    if (names.join() !== [...kernelSel.options].map((o) => o.value).join()) {
      const cur = kernelSel.value;
      kernelSel.replaceChildren(...names.map((n) => el('option', { value: n, text: n })));
      if (names.includes(cur)) kernelSel.value = cur;
    }
    term.setKernels(names);
  };

  const drawHistory = () => {
    const rows = [];
    const s = session();
    for (const h of (s && s.status_history) || []) rows.push({ who: 'session', ...h });
    for (const k of myKernels()) for (const h of k.status_history || []) rows.push({ who: k.hostname, ...h });
    rows.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
    swap(history, el('table', {},
      el('thead', {}, el('tr', {}, ['Time', 'Of', 'Status', 'Reason'].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows.map((h) => el('tr', {},
        el('td', { text: new Date(h.time).toLocaleTimeString() }), el('td', { text: h.who }),
        el('td', {}, statusTag(h.status)), el('td', { class: 'muted', text: h.info || '' }))))));
  };

  const drawApps = () => {
    const s = session();
    const ports = (s && s.service_ports) || [];
    if (!ports.length) { swap(apps, el('p', { class: 'muted', text: 'This session publishes no service ports.' })); return; }
    if (apps.dataset.ports === JSON.stringify(ports)) return; // keep the links already fetched
    apps.dataset.ports = JSON.stringify(ports);
    apps.replaceChildren(el('table', {}, el('tbody', {}, ports.map((p) => {
      const cell = el('td');
      if (p.protocol === 'http') {
        cell.append(el('button', {
          type: 'button', onclick: async (ev) => {
            try {
              const r = await api('POST', '/v1/sessions/' + encodeURIComponent(id) + '/app-url/' + encodeURIComponent(p.name), {});
              cell.replaceChildren(el('a', { href: r.data.url, target: '_blank', rel: 'noopener noreferrer', text: 'Open ' + p.name }),
                el('div', { class: 'muted', text: 'signed link, valid until ' + fmtTime(r.data.expires_at) }));
            } catch (e) { flash('app ' + p.name + ': ' + e.message); }
          },
        }, 'Get link'));
      } else {
        cell.append(el('code', { text: 'corral session app ' + short(id) + ' ' + p.name }));
      }
      return el('tr', {}, el('td', { text: p.name }), el('td', { text: p.protocol }), el('td', { class: 'num', text: String(p.port) }), cell);
    }))));
  };

  // Logs follow through the offsets of GET /v1/sessions/{id}/logs: a read
  // when a kernel event arrives, and one a second while the kernel runs
  // (the agent keeps the logs; nothing announces new bytes).
  const hasLogs = (k) => k && k.agent_id && ['RUNNING', 'RESTARTING', 'TERMINATING', 'TERMINATED', 'ERROR'].includes(k.status) &&
    (k.status !== 'ERROR' || (k.status_history || []).some((h) => h.status === 'RUNNING'));
  const readLogs = async () => {
    if (closed || !kernelSel.value) return;
    // Only a kernel its agent started has logs to read.
    if (!hasLogs(myKernels().find((x) => x.hostname === kernelSel.value))) return;
    if (logState.busy) { logState.again = true; return; }
    logState.busy = true;
    try {
      if (logState.kernel !== kernelSel.value) {
        logState.kernel = kernelSel.value; logState.out = 0; logState.err = 0;
        logs.replaceChildren();
      }
      const p = new URLSearchParams({ kernel: logState.kernel, stdout_offset: logState.out, stderr_offset: logState.err });
      const r = await api('GET', '/v1/sessions/' + encodeURIComponent(id) + '/logs?' + p);
      if (closed || logState.kernel !== kernelSel.value) return;
      const d = r.data;
      const atBottom = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      if (d.stdout) logs.append(document.createTextNode(d.stdout));
      if (d.stderr) logs.append(el('span', { class: 'err', text: d.stderr }));
      if (d.stdout_end) logState.out = d.stdout_end;
      if (d.stderr_end) logState.err = d.stderr_end;
      if (atBottom) logs.scrollTop = logs.scrollHeight;
    } catch (e) {
      if (e.status !== 409 && e.status !== 404) logs.dataset.error = e.message;
    } finally {
      logState.busy = false;
      if (logState.again) { logState.again = false; readLogs(); }
    }
  };
  const tickLogs = () => {
    clearTimeout(logState.timer);
    if (closed) return;
    const k = myKernels().find((x) => x.hostname === kernelSel.value);
    if (k && !TERMINAL.has(k.status)) logState.timer = setTimeout(() => { readLogs(); tickLogs(); }, 1000);
  };
  kernelSel.addEventListener('change', () => { readLogs(); tickLogs(); });

  const drawAll = () => { drawInfo(); drawKernels(); drawHistory(); drawApps(); };
  drawAll();
  (async () => {
    try {
      const r = await api('GET', '/v1/sessions/' + encodeURIComponent(id));
      const s = r.data.session;
      if (newer(S.sessions.get(s.id), s)) S.sessions.set(s.id, s);
      for (const k of r.data.kernels || []) if (newer(S.kernels.get(k.id), k)) S.kernels.set(k.id, k);
      if (closed) return;
      drawAll();
      readLogs();
      tickLogs();
    } catch (e) {
      info.replaceChildren(el('p', { class: 'muted', text: e.message }));
    }
  })();
  return {
    update: (t) => {
      if (t.has('session') || t.has('reload')) { drawInfo(); drawApps(); }
      if (t.has('kernel') || t.has('node') || t.has('reload')) drawKernels();
      if (t.has('session') || t.has('kernel')) drawHistory();
      if (t.has('kernel')) { readLogs(); tickLogs(); }
    },
    close: () => { closed = true; clearTimeout(logState.timer); term.close(); },
  };
}

// terminal is a line-mode terminal on the exec WebSocket: output as text
// (escape sequences dropped), input sent a line (or a control key) at a time.
function terminal(sessionID) {
  const kernel = el('select', { id: 'term-kernel' });
  const cmd = el('input', { id: 'term-cmd', value: 'sh', size: 12, title: 'command (split as a shell would)' });
  const open = el('button', { type: 'button', id: 'term-open', text: 'Open terminal' });
  const out = el('pre', { class: 'term', id: 'term-out' });
  const line = el('input', { id: 'term-input', placeholder: 'type a line, Enter sends it', disabled: true, size: 60, autocomplete: 'off' });
  const ctrlC = el('button', { type: 'button', text: '^C', disabled: true });
  const ctrlD = el('button', { type: 'button', text: '^D', disabled: true });
  const close = el('button', { type: 'button', text: 'Close', disabled: true });
  let ws = null;
  const enc = new TextEncoder();
  const dec = new TextDecoder();
  const write = (s) => {
    // Drop CSI/OSC escape sequences and carriage returns; apply backspaces.
    s = s.replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '').replace(/\x1b\[[0-9;?]*[ -\/]*[@-~]/g, '').replace(/\x1b[()][A-Za-z0-9]/g, '').replace(/\r/g, '');
    let text = out.textContent;
    for (const c of s) {
      if (c === '\b') text = text.slice(0, -1);
      else if (c === '\x07' || c === '\x1b') continue;
      else text += c;
    }
    if (text.length > 200000) text = text.slice(-150000);
    out.textContent = text;
    out.scrollTop = out.scrollHeight;
  };
  const send = (bytes) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const b = new Uint8Array(bytes.length + 1);
    b[0] = 0;
    b.set(bytes, 1);
    ws.send(b);
  };
  const setOpen = (on) => {
    line.disabled = ctrlC.disabled = ctrlD.disabled = close.disabled = !on;
    open.disabled = on;
  };
  open.addEventListener('click', () => {
    let argv;
    try { argv = splitWords(cmd.value); } catch (e) { flash(e.message); return; }
    if (!argv.length) { flash('give a command to run, e.g. sh'); return; }
    out.textContent = '';
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(proto + '//' + location.host + '/v1/sessions/' + encodeURIComponent(sessionID) + '/exec/ws',
      [EXEC_PROTOCOL, WS_TOKEN_PREFIX + S.token]);
    ws.binaryType = 'arraybuffer';
    ws.addEventListener('open', () => {
      ws.send(JSON.stringify({ kernel: kernel.value || undefined, command: argv, stdin: true, tty: true, rows: 24, cols: 100 }));
      setOpen(true);
      line.focus();
    });
    ws.addEventListener('message', (m) => {
      if (typeof m.data === 'string') {
        const f = JSON.parse(m.data);
        if (f.error) write('\n[error: ' + f.error + ']\n');
        else if (f.exit_code !== undefined) write('\n[exited with code ' + f.exit_code + ']\n');
        return;
      }
      const b = new Uint8Array(m.data);
      if (b.length) write(dec.decode(b.subarray(1), { stream: true }));
    });
    ws.addEventListener('close', (c) => {
      if (c.code !== 1000 && c.code !== 1005) write('\n[closed: ' + c.code + (c.reason ? ' ' + c.reason : '') + ']\n');
      setOpen(false);
      ws = null;
    });
  });
  line.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); send(enc.encode(line.value + '\r')); line.value = ''; }
  });
  ctrlC.addEventListener('click', () => send(new Uint8Array([3])));
  ctrlD.addEventListener('click', () => send(new Uint8Array([4])));
  close.addEventListener('click', () => { if (ws) ws.close(1000); });
  const node = el('div', { class: 'card', id: 'terminal' },
    el('div', { class: 'row' }, el('label', {}, 'Kernel', kernel), el('label', {}, 'Command', cmd), open, close),
    out, el('div', { class: 'row' }, line, ctrlC, ctrlD));
  return {
    node,
    setKernels: (names) => {
      if (names.join() === [...kernel.options].map((o) => o.value).join()) return;
      const cur = kernel.value;
      kernel.replaceChildren(...names.map((n) => el('option', { value: n, text: n })));
      if (names.includes(cur)) kernel.value = cur;
    },
    close: () => { if (ws) ws.close(1000); },
  };
}

// ---------- create ----------

function pageNew(main) {
  const drivers = new Set(['exec']);
  for (const a of S.agents.values()) for (const d of a.drivers || []) drivers.add(d);
  const groups = new Set(['default']);
  for (const a of S.agents.values()) groups.add(a.resource_group);
  const f = {
    name: el('input', { name: 'name', id: 'new-name', placeholder: 'optional' }),
    type: el('select', { name: 'type', id: 'new-type' }, ['batch', 'interactive'].map((t) => el('option', { value: t, text: t }))),
    driver: el('select', { name: 'driver', id: 'new-driver' }, [...drivers].sort().map((d) => el('option', { value: d, text: d }))),
    image: el('input', { name: 'image', id: 'new-image', placeholder: 'for runc/vm: docker.io/library/alpine:3' }),
    command: el('textarea', { name: 'command', id: 'new-command', rows: 2, cols: 60, placeholder: "sh -c 'echo hello; sleep 5'" }),
    group: el('select', { name: 'group', id: 'new-group' }, [...groups].sort().map((g) => el('option', { value: g, text: g }))),
    cpu: el('input', { name: 'cpu', id: 'new-cpu', placeholder: '1', size: 5 }),
    mem: el('input', { name: 'mem', id: 'new-mem', placeholder: '512M', size: 7 }),
    gpus: el('input', { name: 'gpus', id: 'new-gpus', placeholder: '0', size: 4 }),
    size: el('input', { name: 'cluster_size', id: 'new-size', placeholder: '1', size: 4 }),
    env: el('textarea', { name: 'env', id: 'new-env', rows: 2, cols: 40, placeholder: 'KEY=value, one a line' }),
    ports: el('input', { name: 'ports', id: 'new-ports', placeholder: 'name:port[/tcp], …' }),
  };
  f.group.value = 'default';
  const msg = el('p', { id: 'new-msg', class: 'muted' });
  const form = el('form', { class: 'card', id: 'new-session' },
    el('div', { class: 'row' }, el('label', {}, 'Name', f.name), el('label', {}, 'Type', f.type), el('label', {}, 'Driver', f.driver),
      el('label', {}, 'Image', f.image), el('label', {}, 'Resource group', f.group)),
    el('div', { class: 'row' }, el('label', {}, 'Command', f.command)),
    el('div', { class: 'row' }, el('label', {}, 'CPU cores', f.cpu), el('label', {}, 'Memory', f.mem), el('label', {}, 'GPUs', f.gpus),
      el('label', {}, 'Kernels', f.size), el('label', {}, 'Environment', f.env), el('label', {}, 'Service ports', f.ports)),
    el('button', { class: 'primary', type: 'submit', id: 'new-submit', text: 'Create session' }), msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    let req;
    try { req = buildCreate(f); } catch (e) { msg.textContent = e.message; return; }
    msg.textContent = 'Creating…';
    try {
      const r = await api('POST', '/v1/sessions', req);
      const s = r.data.session;
      if (newer(S.sessions.get(s.id), s)) S.sessions.set(s.id, s);
      for (const k of r.data.kernels || []) if (newer(S.kernels.get(k.id), k)) S.kernels.set(k.id, k);
      location.hash = '#/session/' + s.id;
    } catch (e) { msg.textContent = e.message; }
  });
  main.append(el('h1', { text: 'New session' }), form);
  return {};
}

function buildCreate(f) {
  const req = { type: f.type.value, driver: f.driver.value, command: splitWords(f.command.value) };
  if (f.name.value.trim()) req.name = f.name.value.trim();
  if (f.image.value.trim()) req.image = f.image.value.trim();
  if (f.group.value) req.resource_group = f.group.value;
  const res = {};
  if (f.cpu.value.trim()) {
    const n = Number(f.cpu.value);
    if (!(n > 0)) throw new Error('CPU cores: want a positive number, e.g. 0.5 or 2');
    res.cpu = n;
  }
  if (f.mem.value.trim()) {
    const b = parseSize(f.mem.value);
    if (!b) throw new Error('Memory: want a size such as 512M or 2G');
    res.mem = b;
  }
  if (f.gpus.value.trim()) {
    const n = Number(f.gpus.value);
    if (!Number.isInteger(n) || n < 0) throw new Error('GPUs: want a whole number');
    if (n > 0) res['cuda.device'] = n;
  }
  if (Object.keys(res).length) req.resources = res;
  if (f.size.value.trim()) {
    const n = Number(f.size.value);
    if (!Number.isInteger(n) || n < 1) throw new Error('Kernels: want a whole number, 1 or more');
    req.cluster_size = n;
  }
  const env = {};
  for (const l of f.env.value.split('\n')) {
    if (!l.trim()) continue;
    const i = l.indexOf('=');
    if (i <= 0) throw new Error('Environment: want KEY=value lines, got ' + JSON.stringify(l));
    env[l.slice(0, i).trim()] = l.slice(i + 1);
  }
  if (Object.keys(env).length) req.env = env;
  const ports = [];
  for (const p of f.ports.value.split(',')) {
    if (!p.trim()) continue;
    const m = /^\s*([A-Za-z0-9][A-Za-z0-9_-]*):(\d+)(?:\/(http|tcp))?\s*$/.exec(p);
    if (!m) throw new Error('Service ports: want name:port or name:port/tcp, got ' + JSON.stringify(p.trim()));
    ports.push({ name: m[1], port: Number(m[2]), protocol: m[3] || 'http' });
  }
  if (ports.length) req.service_ports = ports;
  return req;
}

// ---------- queue ----------

function pageQueue(main) {
  const body = el('div', { id: 'queue' }, el('p', { class: 'muted', text: 'Loading…' }));
  main.append(el('h1', { text: 'Queue' }),
    el('p', { class: 'muted', text: 'Pending sessions of each resource group, in the order the scheduler takes them, with why each is still waiting.' }), body);
  let closed = false, busy = false, again = false;
  const load = async () => {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await api('GET', '/v1/queue');
      if (closed) return;
      const by = new Map();
      for (const e of r.data || []) {
        const g = e.session.resource_group;
        if (!by.has(g)) by.set(g, []);
        by.get(g).push(e);
      }
      if (!by.size) { swap(body, el('p', { class: 'muted', text: 'Nothing is pending.' })); return; }
      swap(body, ...[...by.keys()].sort().map((g) => el('section', { 'data-group': g },
        el('h2', { text: 'Group ' + g + ' (' + by.get(g).length + ' pending)' }),
        el('table', {},
          el('thead', {}, el('tr', {}, ['#', 'Session', 'Owner', 'Priority', 'Created', 'Attempts', 'Pending because'].map((h) => el('th', { text: h })))),
          el('tbody', {}, by.get(g).map((e) => el('tr', {},
            el('td', { class: 'num', text: String(e.position) }),
            el('td', {}, el('a', { href: '#/session/' + e.session.id, class: 'mono', text: e.session.name || short(e.session.id) })),
            el('td', { text: e.session.owner || '' }),
            el('td', { class: 'num', text: String(e.session.priority || 0) }),
            el('td', { text: fmtTime(e.session.created_at) }),
            el('td', { class: 'num', text: String(e.session.schedule_attempts || 0) }),
            el('td', { text: e.session.status_info || '' }))))))));
    } catch (e) {
      body.replaceChildren(el('p', { class: 'muted', text: e.message }));
    } finally {
      busy = false;
      if (again && !closed) { again = false; load(); }
    }
  };
  load();
  // The queue's order is the scheduler's, computed by the server: read it
  // again when sessions or nodes change.
  return { update: (t) => { if (t.has('session') || t.has('node') || t.has('reload')) load(); }, close: () => { closed = true; } };
}

// ---------- endpoints ----------

function pageEndpoints(main) {
  const body = el('div', { id: 'endpoints' }, el('p', { class: 'muted', text: 'Loading…' }));
  main.append(el('h1', { text: 'Endpoints' }), body);
  let closed = false, timer = null, busy = false;
  const load = async () => {
    if (busy) return;
    busy = true;
    try {
      const r = await api('GET', '/v1/endpoints');
      if (closed) return;
      const list = r.data || [];
      if (!list.length) { swap(body, el('p', { class: 'muted', text: 'No endpoints. Create one with corral endpoint create (docs/endpoints.md).' })); return; }
      swap(body, ...list.map((d) => {
        const e = d.endpoint;
        return el('div', { class: 'card', 'data-endpoint': e.name },
          el('h2', {}, e.name, ' ', el('span', { class: 'muted mono', text: d.path })),
          el('dl', { class: 'kv' },
            el('dt', { text: 'Replicas' }), el('dd', { text: (d.replicas || []).length + ' running of ' + e.replicas + ' wanted (min ' + e.min_replicas + ', max ' + e.max_replicas + ')' }),
            el('dt', { text: 'Requests' }), el('dd', { text: (d.rps || 0).toFixed(2) + ' req/s, concurrency ' + (d.concurrency || 0).toFixed(2) +
              (e.target_rps ? ' (target ' + e.target_rps + ' req/s a replica)' : '') + (e.target_concurrency ? ' (target concurrency ' + e.target_concurrency + ')' : '') }),
            el('dt', { text: 'Owner' }), el('dd', { text: e.owner }),
            el('dt', { text: 'Generation' }), el('dd', { text: String(e.generation) })),
          el('table', {},
            el('thead', {}, el('tr', {}, ['Replica', 'Status', 'Health', 'Generation', 'Agent', 'Created'].map((h) => el('th', { text: h })))),
            el('tbody', {}, (d.replicas || []).map((rp) => el('tr', {},
              el('td', {}, el('a', { href: '#/session/' + rp.session_id, class: 'mono', text: short(rp.session_id) })),
              el('td', {}, statusTag(rp.status), rp.draining ? [' ', statusTag('draining', 'drain')] : ''),
              el('td', {}, statusTag(rp.health, (rp.health || '').split(':')[0])),
              el('td', { class: 'num', text: String(rp.generation) }),
              el('td', { text: rp.agent || '' }),
              el('td', { text: fmtTime(rp.created_at) }))))));
      }));
    } catch (e) {
      body.replaceChildren(el('p', { class: 'muted', text: e.message }));
    } finally { busy = false; }
  };
  load();
  // Replicas change with sessions (events); request rates are the
  // autoscaler's measurements, which no event carries: read them every 5 s
  // while this page is open.
  const tick = () => { timer = setTimeout(() => { if (!document.hidden) load(); tick(); }, 5000); };
  tick();
  return {
    update: (t) => {
      if (t.has('reload') || (t.has('session') && [...S.sessions.values()].some((s) => s.endpoint))) load();
    },
    close: () => { closed = true; clearTimeout(timer); },
  };
}

// ---------- admin ----------

function pageAdmin(main) {
  if (!S.me.admin) { main.append(el('p', { class: 'muted', text: 'This page needs an admin key.' })); return {}; }
  const keys = el('div', { id: 'keys' });
  const users = el('div', { id: 'users' });
  const shown = el('div', { id: 'new-token' });
  const ku = el('input', { id: 'key-user', placeholder: 'user', required: true });
  const kp = el('input', { id: 'key-policy', placeholder: 'policy (optional)' });
  const ka = el('input', { id: 'key-admin', type: 'checkbox' });
  const keyForm = el('form', { class: 'row', id: 'key-form' }, el('label', {}, 'User', ku), el('label', {}, 'Policy', kp),
    el('label', { class: 'check' }, ka, 'admin'), el('button', { type: 'submit', class: 'primary', text: 'Create key' }));
  const un = el('input', { id: 'user-name', placeholder: 'name', required: true });
  const ua = el('input', { id: 'user-admin', type: 'checkbox' });
  const userForm = el('form', { class: 'row', id: 'user-form' }, el('label', {}, 'Name', un),
    el('label', { class: 'check' }, ua, 'admin'), el('button', { type: 'submit', text: 'Create user' }));
  main.append(el('h1', { text: 'Admin' }),
    el('p', { class: 'muted', text: 'Drain and re-enable nodes on the Nodes page; destroy sessions on the Sessions page.' }),
    el('h2', { text: 'Access keys' }), keyForm, shown, keys, el('h2', { text: 'Users' }), userForm, users);
  let closed = false;
  const load = async () => {
    try {
      const [k, u] = await Promise.all([api('GET', '/v1/keys'), api('GET', '/v1/users')]);
      if (closed) return;
      keys.replaceChildren(el('table', {},
        el('thead', {}, el('tr', {}, ['Access key', 'User', 'Admin', 'Policy', 'Groups', 'Created', ''].map((h) => el('th', { text: h })))),
        el('tbody', {}, (k.data || []).map((x) => el('tr', { 'data-key': x.access_key },
          el('td', { class: 'mono', text: x.access_key }), el('td', { text: x.user }), el('td', { text: x.admin ? 'yes' : '' }),
          el('td', { text: x.policy || '' }), el('td', { text: (x.allowed_groups || []).join(', ') }),
          el('td', { text: fmtTime(x.created_at) }),
          el('td', {}, x.revoked ? statusTag('revoked', 'CANCELLED') : x.access_key === S.me.access_key ? el('span', { class: 'muted', text: 'this key' })
            : confirmButton('Revoke', async () => {
              try { await api('DELETE', '/v1/keys/' + encodeURIComponent(x.access_key)); load(); } catch (e) { flash(e.message); }
            })))))));
      users.replaceChildren(el('table', {},
        el('thead', {}, el('tr', {}, ['User', 'Admin', 'Created'].map((h) => el('th', { text: h })))),
        el('tbody', {}, (u.data || []).map((x) => el('tr', {}, el('td', { text: x.name }), el('td', { text: x.admin ? 'yes' : '' }), el('td', { text: fmtTime(x.created_at) }))))));
    } catch (e) { keys.replaceChildren(el('p', { class: 'muted', text: e.message })); }
  };
  keyForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const body = { user: ku.value.trim(), admin: ka.checked };
      if (kp.value.trim()) body.policy = kp.value.trim();
      const r = await api('POST', '/v1/keys', body);
      shown.replaceChildren(el('p', {}, 'New key for ' + r.data.key.user + ' (shown once):'), el('div', { class: 'secret', text: r.data.token }));
      ku.value = ''; kp.value = ''; ka.checked = false;
      load();
    } catch (e) { flash('create key: ' + e.message); }
  });
  userForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      await api('POST', '/v1/users', { name: un.value.trim(), admin: ua.checked });
      un.value = ''; ua.checked = false;
      flash('User created', true);
      load();
    } catch (e) { flash('create user: ' + e.message); }
  });
  load();
  return { close: () => { closed = true; } };
}

// ---------- routing ----------

const PAGES = { nodes: pageNodes, sessions: pageSessions, session: pageSession, new: pageNew, queue: pageQueue, endpoints: pageEndpoints, admin: pageAdmin };

function route() {
  const [path] = location.hash.replace(/^#\/?/, '').split('?');
  const [name, arg] = path.split('/');
  if (S.page && S.page.close) S.page.close();
  S.page = null;
  const main = $('#main');
  main.replaceChildren();
  const page = S.me ? (PAGES[name] ? name : 'nodes') : 'login';
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === (page === 'session' ? 'sessions' : page));
  document.body.dataset.page = page;
  S.page = (page === 'login' ? pageLogin(main) : PAGES[page](main, arg && decodeURIComponent(arg))) || {};
  S.page.name = page;
}

async function start() {
  $('#logout').addEventListener('click', () => logout());
  window.addEventListener('hashchange', route);
  if (S.token) {
    try { await login(S.token); } catch (e) { S.token = ''; sessionStorage.removeItem(TOKEN_KEY); flash('log in again: ' + e.message); }
  }
  route();
}

start();
