// rlhfkit admin page: quality report and exports. Values are inserted with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "rlhfkit-admin-token";
let token = sessionStorage.getItem(KEY);

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  const data = await r.json();
  if (!r.ok) throw new Error(data.detail || r.statusText);
  return data;
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (typeof x === "number") return Number.isInteger(x) ? String(x) : x.toFixed(3);
  if (Array.isArray(x)) return "[" + x.map(fmt).join(", ") + "]";
  return String(x);
}

function fillRows(table, rows) {
  table.replaceChildren();
  for (const [key, label, value] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.metric = key;
    const th = document.createElement("th");
    th.textContent = label;
    const td = document.createElement("td");
    td.textContent = fmt(value);
    td.dataset.value = value === null || value === undefined ? "" : JSON.stringify(value);
    tr.append(th, td);
    table.appendChild(tr);
  }
}

function fillTable(table, columns, records) {
  table.replaceChildren();
  const head = document.createElement("tr");
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  table.appendChild(head);
  for (const rec of records) {
    const tr = document.createElement("tr");
    for (const c of columns) { const td = document.createElement("td"); td.textContent = fmt(rec[c]); tr.appendChild(td); }
    table.appendChild(tr);
  }
}

async function loadReport() {
  const name = $("project-select").value;
  if (!name) return;
  const r = await api(`/api/v1/admin/projects/${encodeURIComponent(name)}/report`);
  const a = r.agreement;
  fillRows($("summary"), [
    ["kind", "Kind", r.kind], ["tasks", "Tasks", r.tasks], ["tasks_complete", "Tasks complete", r.tasks_complete],
    ["votes", "Votes", r.votes], ["skips", "Skips", r.skips], ["annotators", "Annotators", r.annotators],
    ["median_seconds", "Median seconds per item", r.median_seconds],
    ["gold_accuracy", "Gold accuracy", r.gold.accuracy], ["gold_n", "Gold items answered", r.gold.n],
  ]);
  fillRows($("agreement"), [
    ["raw", "Raw pairwise agreement", a.raw], ["raw_pairs", "Rater pairs", a.raw_pairs],
    ["raw_without_ties", "Raw agreement without ties", a.raw_without_ties],
    ["cohen_kappa", "Cohen's κ (2 raters)", a.cohen_kappa], ["fleiss_kappa", "Fleiss' κ", a.fleiss_kappa],
    ["krippendorff_alpha", `Krippendorff's α (${a.alpha_level})`, a.krippendorff_alpha],
    ["kendall_tau", "Mean Kendall's τ-b", a.kendall_tau],
  ]);
  fillRows($("bias"), [
    ["p_first_wins", "P(first shown wins)", r.position_bias.p_first_wins],
    ["p_first_ci95", "95 % interval", r.position_bias.ci95],
    ["p_first_chance", "Chance level (mean 1/k)", r.position_bias.chance],
    ["self_consistency", "Self-consistency on repeats", r.self_consistency.value],
    ["self_consistency_n", "Repeats answered", r.self_consistency.n],
  ]);
  fillTable($("annotators"), ["annotator", "pseudonym", "active", "votes", "skips", "median_seconds",
    "gold_accuracy", "gold_n", "position_bias", "self_consistency", "agreement_with_others", "flags"], r.annotator_stats);
  $("ab").hidden = !r.ab_eval;
  if (r.ab_eval) fillTable($("ab-table"), ["model_a", "model_b", "win_rate", "ci95", "ties", "n"], r.ab_eval.pairs);
  $("status").textContent = "Loaded " + new Date().toLocaleTimeString();
}

async function download(what) {
  const name = $("project-select").value;
  const recs = await api(`/api/v1/admin/projects/${encodeURIComponent(name)}/export?what=${what}`);
  const blob = new Blob([recs.map((r) => JSON.stringify(r)).join("\n") + "\n"], { type: "application/jsonl" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${name}-${what}.jsonl`;
  a.click();
}

async function start() {
  if (!token) { $("login").hidden = false; return; }
  try {
    const projects = await api("/api/v1/admin/projects");
    $("login").hidden = true;
    $("main").hidden = false;
    $("project-select").replaceChildren(...projects.map((p) => {
      const o = document.createElement("option");
      o.value = p.name;
      o.textContent = `${p.name} (${p.kind}, ${p.votes} votes)`;
      return o;
    }));
    await loadReport();
  } catch (e) {
    sessionStorage.removeItem(KEY);
    $("login").hidden = false;
    $("login-error").textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token-input").value.trim();
    sessionStorage.setItem(KEY, token);
    start();
  });
  $("project-select").addEventListener("change", loadReport);
  $("refresh").addEventListener("click", loadReport);
  $("download-raw").addEventListener("click", () => download("raw"));
  $("download-agg").addEventListener("click", () => download("aggregated"));
  start();
});
