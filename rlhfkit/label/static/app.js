// rlhfkit annotator page. Plain JS, no dependencies. Model text is inserted with textContent
// only (never innerHTML), and the token travels in the Authorization header, never a cookie.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "rlhfkit-annotator-token";
const state = { token: null, me: null, task: null, sel: null, shownAt: 0, busy: false, tieNext: false };

function takeInviteToken() {
  // Invite links carry the token in the fragment, which browsers never send to the server.
  const m = location.hash.match(/^#token=([A-Za-z0-9_-]+)$/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, m[1]);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const detail = data && data.detail;
    const msg = Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : (detail || r.statusText);
    const err = new Error(msg);
    err.status = r.status;
    err.code = data && data.code;
    throw err;
  }
  return data;
}

function show(id) {
  for (const s of ["login", "task", "done"]) $(s).hidden = s !== id;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function start() {
  state.token = takeInviteToken();
  if (!state.token) { show("login"); $("token-input").focus(); return; }
  try {
    state.me = await api("GET", "/api/v1/me");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    show("login");
    $("login-error").textContent = e.message;
    return;
  }
  $("project").textContent = state.me.project;
  $("guidelines").innerHTML = state.me.guidelines_html;  // rendered server-side, raw HTML escaped
  $("toggle-guidelines").hidden = !state.me.guidelines_html;
  const next = await api("GET", "/api/v1/tasks/next");
  render(next);
}

function render(next) {
  $("progress").textContent = `done ${next.progress.done}, skipped ${next.progress.skipped}`;
  state.task = next.task;
  if (!state.task) { show("done"); return; }
  show("task");
  state.sel = { choice: null, strength: null, groups: [], notRankable: false, rating: null, best: null, worst: null };
  state.tieNext = false;
  state.shownAt = performance.now();
  $("critique").value = "";
  $("edited").value = "";
  $("skip-form").hidden = true;
  renderPrompt(state.task.prompt);
  renderResponses();
  renderControls();
  document.activeElement && document.activeElement.blur();
}

function renderPrompt(prompt) {
  const box = $("prompt");
  box.replaceChildren();
  const turns = typeof prompt === "string" ? [{ role: "", content: prompt }] : prompt;
  for (const t of turns) {
    const div = document.createElement("div");
    if (t.role) {
      const role = document.createElement("span");
      role.className = "role";
      role.textContent = t.role + ":";
      div.appendChild(role);
    }
    div.appendChild(document.createTextNode(t.content));
    box.appendChild(div);
  }
}

function renderResponses() {
  const box = $("responses");
  box.replaceChildren();
  for (const r of state.task.responses) {
    const card = document.createElement("article");
    card.className = "response";
    card.dataset.position = r.position;
    const h = document.createElement("h3");
    h.textContent = state.task.responses.length === 1 ? "Response" : `Response ${r.position}`;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = r.text;
    card.append(h, text);
    box.appendChild(card);
  }
}

function button(label, onClick, on) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (on) b.className = "on";
  b.addEventListener("click", () => { onClick(); renderControls(); });
  return b;
}

const CONTROLS = {
  pairwise: pairControls, ab_eval: pairControls, ranking: rankingControls,
  rating: ratingControls, bws: bwsControls,
};

function renderControls() {
  const box = $("controls");
  box.replaceChildren();
  $("help").textContent = CONTROLS[state.task.kind](box);
  for (const card of document.querySelectorAll(".response")) {
    const p = Number(card.dataset.position);
    const s = state.sel;
    card.classList.toggle("chosen", s.choice === String(p) || s.best === p || (s.groups[0] || []).includes(p));
    card.classList.toggle("worst", s.worst === p);
  }
}

function pairControls(box) {
  const s = state.sel;
  const choices = [["1", "Response 1 (1)"], ["2", "Response 2 (2)"], ["tie", "Tie (0)"], ["both_bad", "Both bad (9)"]];
  for (const [c, label] of choices) box.appendChild(button(label, () => { s.choice = c; if (!decisive()) s.strength = null; }, s.choice === c));
  if (state.me.strength_levels && decisive()) {
    state.me.strength_levels.forEach((lvl, i) => box.appendChild(
      button(`${lvl} (${"qwer"[i]})`, () => { s.strength = i; }, s.strength === i)));
  }
  return "Keys: 1 / 2 pick a response, 0 tie, 9 both bad" +
    (state.me.strength_levels ? ", then q w e r for how much better" : "") + "; Enter submits, s skips.";
}

function decisive() { return state.sel.choice === "1" || state.sel.choice === "2"; }

function rankingControls(box) {
  const s = state.sel;
  const k = state.task.responses.length;
  for (let p = 1; p <= k; p++) box.appendChild(button(`${p}`, () => placeRank(p, false), s.groups.flat().includes(p)));
  box.appendChild(button("Tie with previous (=)", () => { state.tieNext = true; }, state.tieNext));
  box.appendChild(button("Undo (Backspace)", () => { undoRank(); }));
  box.appendChild(button("Not rankable (n)", () => { s.notRankable = !s.notRankable; }, s.notRankable));
  const list = document.createElement("span");
  list.className = "rank-list";
  list.id = "rank-list";
  list.textContent = s.notRankable ? "not rankable" : s.groups.map((g) => g.join(" = ")).join("  >  ");
  box.appendChild(list);
  return "Keys: press response numbers best first; = before a number ties it with the previous one; " +
    "Backspace undoes; n marks not rankable; Enter submits.";
}

function placeRank(p, forceTie) {
  const s = state.sel;
  if (p > state.task.responses.length || s.groups.flat().includes(p)) return;
  if ((state.tieNext || forceTie) && s.groups.length) s.groups[s.groups.length - 1].push(p);
  else s.groups.push([p]);
  state.tieNext = false;
}

function undoRank() {
  const g = state.sel.groups;
  if (!g.length) return;
  g[g.length - 1].pop();
  if (!g[g.length - 1].length) g.pop();
}

function ratingControls(box) {
  for (let r = 1; r <= 5; r++) box.appendChild(button(`${r}`, () => { state.sel.rating = r; }, state.sel.rating === r));
  return "Keys: 1 (worst) to 5 (best), then Enter; s skips.";
}

function bwsControls(box) {
  const s = state.sel;
  const k = state.task.responses.length;
  for (let p = 1; p <= k; p++) box.appendChild(button(`${p}`, () => pickBws(p), s.best === p || s.worst === p));
  box.appendChild(button("Reset (Backspace)", () => { s.best = null; s.worst = null; }));
  return `Keys: the best response's number, then the worst's (best ${s.best || "?"}, worst ${s.worst || "?"}); Enter submits.`;
}

function pickBws(p) {
  const s = state.sel;
  if (s.best === null) s.best = p;
  else if (s.worst === null && p !== s.best) s.worst = p;
}

function payload() {
  const s = state.sel;
  const kind = state.task.kind;
  const body = { elapsed_ms: Math.round(performance.now() - state.shownAt) };
  if (kind === "pairwise" || kind === "ab_eval") {
    if (!s.choice) return null;
    body.choice = s.choice;
    if (s.strength !== null) body.strength = s.strength;
  } else if (kind === "ranking") {
    if (s.notRankable) body.not_rankable = true;
    else if (s.groups.flat().length === state.task.responses.length) body.ranking = s.groups;
    else return null;
  } else if (kind === "rating") {
    if (s.rating === null) return null;
    body.rating = s.rating;
  } else {
    if (s.best === null || s.worst === null) return null;
    body.best = s.best;
    body.worst = s.worst;
  }
  if ($("critique").value.trim()) body.critique = $("critique").value;
  if ($("edited").value.trim()) body.edited = $("edited").value;
  return body;
}

async function send(path, body) {
  if (state.busy) return;
  state.busy = true;
  try {
    const next = await api("POST", path, body);
    setStatus("Saved.", false);
    render(next);
  } catch (e) {
    if (e.status === 409) {
      // A lease that ran out while others completed the task: say the answer was not kept.
      const expired = e.code === "assignment_expired";
      setStatus(expired ? e.message : "Already saved.", expired);
      render(await api("GET", "/api/v1/tasks/next"));
    } else setStatus(e.message, true);  // 429 included: its message says how long to wait
  } finally {
    state.busy = false;
  }
}

function submit() {
  const body = payload();
  if (!body) { setStatus("Answer first (see the keys below).", true); return; }
  send(`/api/v1/tasks/${state.task.task_id}/vote`, body);
}

function openSkip() {
  $("skip-form").hidden = false;
  $("skip-reason").value = "";
  $("skip-reason").focus();
}

function onKey(ev) {
  if (!state.task || $("task").hidden) return;
  const typing = ["TEXTAREA", "INPUT"].includes(document.activeElement && document.activeElement.tagName);
  if (ev.key === "Escape") { document.activeElement.blur(); $("skip-form").hidden = true; return; }
  if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (handleKey(ev.key)) { ev.preventDefault(); renderControls(); }
}

function handleKey(key) {
  const s = state.sel;
  const kind = state.task.kind;
  const digit = /^[0-9]$/.test(key) ? Number(key) : null;
  if (key === "Enter") { submit(); return true; }
  if (key === "s") { openSkip(); return true; }
  if (key === "g") { $("guidelines").hidden = !$("guidelines").hidden; return true; }
  // c / t (not e: q w e r are the strength keys) open the critique and edited-response fields.
  if (key === "c" || key === "t") { $("extras").open = true; $(key === "c" ? "critique" : "edited").focus(); return true; }
  if (kind === "pairwise" || kind === "ab_eval") {
    const map = { 1: "1", 2: "2", 0: "tie", 9: "both_bad" };
    if (digit !== null && map[digit]) { s.choice = map[digit]; if (!decisive()) s.strength = null; return true; }
    const lvl = "qwer".indexOf(key);
    if (lvl >= 0 && state.me.strength_levels && decisive()) { s.strength = lvl; return true; }
  } else if (kind === "ranking") {
    if (digit) { placeRank(digit, false); return true; }
    if (key === "=") { state.tieNext = true; return true; }
    if (key === "Backspace") { undoRank(); return true; }
    if (key === "n") { s.notRankable = !s.notRankable; return true; }
  } else if (kind === "rating") {
    if (digit >= 1 && digit <= 5) { s.rating = digit; return true; }
  } else if (kind === "bws") {
    if (digit) { pickBws(digit); return true; }
    if (key === "Backspace") { s.best = null; s.worst = null; return true; }
  }
  return false;
}

function tick() {
  if (state.task && !$("task").hidden) {
    $("timer").textContent = `this item: ${Math.floor((performance.now() - state.shownAt) / 1000)} s`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("login-error").textContent = "";
    start();
  });
  $("skip-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send(`/api/v1/tasks/${state.task.task_id}/skip`, { reason: $("skip-reason").value });
  });
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", openSkip);
  $("toggle-guidelines").addEventListener("click", () => { $("guidelines").hidden = !$("guidelines").hidden; });
  document.addEventListener("keydown", onKey);
  setInterval(tick, 1000);
  start();
});
