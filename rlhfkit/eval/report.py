"""The evaluation report: one self-contained HTML file (plots embedded as base64 PNG, no scripts,
no network) built from run directories.

    write_report("runs/demo/report.html",
                 {"sft": "runs/demo/sft", "rm": "runs/demo/rm", "ppo": "runs/demo/ppo", "eval": "runs/demo/eval"},
                 {"overoptimisation": study, "title": "Demo"})

Sections: training curves of the PPO run (`metrics.jsonl`), the SFT loss curve, RM accuracy and
calibration (reliability diagram from the RM `summary.json`), the win-rate table of the eval run,
proxy-vs-gold curves (an `overoptimisation_study` result in `extra`), and side-by-side responses.
A missing run or file leaves its section with a note instead of failing the report; every text
taken from a run (prompts, responses, names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import json
import math
from html import escape
from pathlib import Path
from typing import Any, Callable

PPO_CURVES = [
    ("reward/rm", "RM reward"), ("reward/gold", "gold reward"), ("kl/ref", "KL to reference (nats)"),
    ("kl/coef", "KL coefficient β"), ("policy/entropy", "entropy (nats/token)"),
    ("response/length", "response length (tokens)"), ("ppo/clipfrac", "policy clip fraction"),
    ("value/explained_variance", "value explained variance"),
]
"""PPO metrics plotted against the step, with their axis titles."""
SFT_CURVES = [("train/loss", "train loss"), ("eval/loss", "held-out loss")]
DEFAULT_SAMPLE_ROWS = 8
"""Prompts shown side by side."""
STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.missing{color:#a33;font-style:italic}img{max-width:100%}td{max-width:420px}"""


# ---------------------------------------------------------------------------------------- helpers
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v, digits) for v in value)
    return escape(str(value))


def _missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; `header` is escaped here, cells must already be safe HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(n_plots: int, cols: int = 2, height: float = 2.8):
    """A matplotlib Figure (object API, Agg canvas: no display, no global pyplot state) and its axes."""
    from matplotlib.figure import Figure

    cols = min(cols, n_plots)
    rows = math.ceil(n_plots / cols)
    fig = Figure(figsize=(5 * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_plots:]:
        ax.set_visible(False)
    return fig, axes[:n_plots]


def _img(fig, alt: str) -> str:
    """The figure as an <img> with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _safe(build: Callable[..., str], *args: Any) -> str:
    """Render one section; a malformed input spoils only its own section, not the report."""
    try:
        return build(*args)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a note in the report
        return _missing(f"This section could not be rendered: {type(exc).__name__}: {exc}")


def _curves(rows: list[dict], curves: list[tuple[str, str]], what: str) -> str:
    present = [(k, t) for k, t in curves if _series(rows, k)[0]]
    absent = [k for k, _ in curves if not _series(rows, k)[0]]
    note = _missing(f"Not logged in this run: {', '.join(absent)}.") if absent else ""
    if not present:
        return note
    fig, axes = _figure(len(present))
    for ax, (key, title) in zip(axes, present):
        steps, values = _series(rows, key)
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _img(fig, f"{what} training curves") + note


# ---------------------------------------------------------------------------------------- sections
def _runs_section(runs: dict[str, Path]) -> str:
    if not runs:
        return _missing("No run directories were given.")
    rows = [[escape(k), escape(str(p)), "yes" if p.is_dir() else "<b>missing</b>"] for k, p in runs.items()]
    return _table(["stage", "run directory", "found"], rows)


def _ppo_section(run: Path | None) -> str:
    rows = _read_jsonl(run / "metrics.jsonl") if run else []
    if not rows:
        return _missing("No PPO run metrics (metrics.jsonl) were given or found.")
    summary = _read_json(run / "summary.json") or {}
    scalars = [[escape(k), _fmt(v)] for k, v in summary.items() if isinstance(v, (int, float, str))]
    return _curves(rows, PPO_CURVES, "PPO") + (_table(["summary", "value"], scalars) if scalars else "")


def _sft_section(run: Path | None) -> str:
    rows = _read_jsonl(run / "metrics.jsonl") if run else []
    if not rows:
        return _missing("No SFT run metrics (metrics.jsonl) were given or found.")
    summary = _read_json(run / "summary.json") or {}
    keys = ["unigram_loss", "eval_loss_before", "eval_loss", "eval_perplexity", "gold_reward_before",
            "gold_reward_after"]
    scalars = [[escape(k), _fmt(summary[k])] for k in keys if k in summary]
    return _curves(rows, SFT_CURVES, "SFT") + (_table(["summary", "value"], scalars) if scalars else "")


def _reliability_rows(summary: dict) -> list[tuple[float, float, float, float, int]]:
    """(lower, upper, confidence, accuracy, count) of each non-empty bin; accepts rows with
    `bin: [lo, hi]` or `lower`/`upper`."""
    table = summary.get("reliability_table") or summary.get("reliability") or []
    out = []
    for row in table:
        lo, hi = row["bin"] if "bin" in row else (row["lower"], row["upper"])
        if row.get("count") and row.get("confidence") is not None and row.get("accuracy") is not None:
            out.append((lo, hi, row["confidence"], row["accuracy"], row["count"]))
    return out


def _rm_section(run: Path | None) -> str:
    summary = _read_json(run / "summary.json") if run else None
    if not summary:
        return _missing("No reward-model run summary (summary.json) was given or found.")
    acc, ceiling = summary.get("eval_accuracy"), summary.get("bayes_ceiling")
    ratio = acc / ceiling if isinstance(acc, (int, float)) and isinstance(ceiling, (int, float)) and ceiling else None
    keys = ["eval_accuracy", "gold_accuracy", "bayes_ceiling", "ece", "eval_loss", "eval_pairs"]
    rows = [[escape(k), _fmt(summary.get(k))] for k in keys if k in summary]
    rows.append(["accuracy / Bayes ceiling", _fmt(ratio)])
    html = _table(["figure", "value"], rows)
    bins = _reliability_rows(summary)
    if bins:
        fig, (ax,) = _figure(1, height=3.6)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        ax.bar([(lo + hi) / 2 for lo, hi, *_ in bins], [a for *_, a, _ in bins],
               width=[hi - lo for lo, hi, *_ in bins], alpha=0.4, edgecolor="k", label="accuracy per bin")
        ax.plot([c for _, _, c, _, _ in bins], [a for *_, a, _ in bins], marker="o", label="(confidence, accuracy)")
        ax.set(xlabel="predicted P(preferred wins)", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
               title="RM reliability diagram")
        ax.legend(fontsize=8)
        html += _img(fig, "reward-model reliability diagram")
    else:
        html += _missing("No reliability table in the RM summary.")
    buckets = summary.get("accuracy_by_bucket") or {}
    if buckets:
        html += _table(["bucket", "accuracy", "pairs"], [[escape(str(b)), _fmt(v.get("accuracy")), _fmt(v.get("pairs"))]
                                                         for b, v in buckets.items()])
    return html


def _interval(d: dict | None) -> str:
    if not d or d.get("win_rate") is None:
        return "–"
    return f"{_fmt(d['win_rate'])} [{_fmt(d.get('low'))}, {_fmt(d.get('high'))}]"


def _decoding_table(part: dict, baseline: str) -> str:
    wins, bt = part.get("win_rate", {}), part.get("bradley_terry") or {}
    header = ["model", f"win rate vs {baseline} [CI]", "W / T / L", "length-matched [CI]", "Δ words", "gold", "RM",
              "KL (nats)", "length (tokens)", "EOS", "distinct-1", "distinct-2"] + (["BT score"] if bt else [])
    rows = []
    for name, m in part.get("models", {}).items():
        w = wins.get(name)
        row = [escape(name) + (" (baseline)" if name == baseline else ""), _interval(w),
               f"{w['wins']} / {w['ties']} / {w['losses']}" if w else "–", _interval(w and w.get("length_matched")),
               _fmt(w and w.get("mean_length_diff_words"), 2), _fmt(m.get("gold")), _fmt(m.get("rm")),
               _fmt(m.get("kl")) + (" (analytic)" if m.get("kl_method") == "analytic_bon" else ""),
               _fmt(m.get("length_tokens"), 1), _fmt(m.get("eos_fraction"), 2), _fmt(m.get("distinct_1"), 2),
               _fmt(m.get("distinct_2"), 2)] + ([_fmt(bt.get(name))] if bt else [])
        rows.append(row)
    decoding = "greedy" if part.get("greedy") else f"sampled at temperature {_fmt(part.get('temperature'), 2)}"
    return f"<h3>Decoding: {decoding}</h3>" + _table(header, rows)


def _win_rate_plot(decodings: dict, baseline: str) -> str:
    parts = [(label, part) for label, part in decodings.items() if part.get("win_rate")]
    if not parts:
        return ""
    fig, axes = _figure(len(parts), height=max(2.0, 0.8 + 0.5 * max(len(p["win_rate"]) for _, p in parts)))
    for ax, (label, part) in zip(axes, parts):
        names = list(part["win_rate"])
        rates = [part["win_rate"][n]["win_rate"] for n in names]
        errors = [[r - part["win_rate"][n]["low"] for n, r in zip(names, rates)],
                  [part["win_rate"][n]["high"] - r for n, r in zip(names, rates)]]
        ax.errorbar(rates, range(len(names)), xerr=errors, fmt="o", capsize=4)
        ax.axvline(0.5, color="grey", ls="--")
        ax.set(yticks=range(len(names)), yticklabels=names, xlim=(0, 1), ylim=(-0.5, len(names) - 0.5),
               xlabel=f"win rate vs {baseline}",
               title=f"decoding {label}")
    return _img(fig, "win rates with intervals")


def _eval_section(run: Path | None) -> str:
    summary = _read_json(run / "summary.json") if run else None
    if not summary or "decodings" not in summary:
        return _missing("No evaluation run summary (summary.json of `rlhfkit eval`) was given or found.")
    baseline = summary.get("baseline", "baseline")
    intro = (f"<p>{_fmt(summary.get('n_prompts'))} prompts from {_fmt(summary.get('prompt_source'))}; judge "
             f"{_fmt(summary.get('judge'))}, every comparison judged in both orders, ties count ½; intervals "
             f"{_fmt(100 * summary.get('confidence', 0.95), 0)} %; KL to {_fmt(summary.get('reference'))}.</p>")
    html = intro + "".join(_decoding_table(part, baseline) for part in summary["decodings"].values())
    html += _win_rate_plot(summary["decodings"], baseline)
    ppl = [[escape(n), _fmt(i["perplexity"].get("perplexity"), 2), _fmt(i["perplexity"].get("loss"))]
           for n, i in summary.get("models", {}).items() if i.get("perplexity")]
    if ppl:
        html += "<h3>Held-out SFT perplexity (forgetting)</h3>" + _table(["model", "perplexity", "loss (nats)"], ppl)
    return html


def _overopt_section(study: dict | str | Path | None) -> str:
    if isinstance(study, (str, Path)):
        study = _read_json(Path(study))
    parts = [(k, study[k]) for k in ("rl", "bon") if study and study.get(k)] if study else []
    if not parts:
        return _missing("No over-optimisation study (extra['overoptimisation']) was given.")
    fig, axes = _figure(len(parts), height=3.6)
    rows = []
    for ax, (kind, part) in zip(axes, parts):
        d = [p["d"] for p in part["points"]]
        ax.plot(d, [p["proxy"] for p in part["points"]], "o", label="proxy (RM)")
        ax.plot(d, [p["gold"] for p in part["points"]], "s", label="gold")
        ax.plot(part["curve"]["d"], part["curve"]["gold_fit"], "-", label=f"fit: {part['form']} form")
        ax.set(xlabel="d = √KL", ylabel="score − initial policy", title="PPO" if kind == "rl" else "best-of-n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        for form, fit in part["fits"].items():
            rows.append([escape(kind), escape(form) + (" (primary)" if form == part["form"] else ""),
                         _fmt(fit["alpha"]), _fmt(fit["beta"]), _fmt(fit["r2"]), _fmt(fit.get("peak_kl")),
                         _fmt(fit.get("peak_reward"))])
    header = ["optimiser", "form", "α", "β", "R²", "peak KL (nats)", "peak gold (centred)"]
    return _img(fig, "proxy and gold reward against sqrt KL") + _table(header, rows)


def _response_cell(entry: dict | None) -> str:
    if not entry:
        return "–"
    extras = [f"{k} {_fmt(entry[k], 2)}" for k in ("gold", "score") if isinstance(entry.get(k), (int, float))]
    if entry.get("finished") is False:
        extras.append("no EOS")
    note = f"<br><small>{escape('; '.join(extras))}</small>" if extras else ""
    return escape(str(entry.get("text", entry.get("response", "")))) + note


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt if isinstance(m, dict))
    return str(prompt)


def _eval_samples(run: Path, n: int) -> str | None:
    rows = _read_jsonl(run / "samples.jsonl")
    if not rows:
        return None
    labels = list(dict.fromkeys(r["decoding"] for r in rows))
    label = "greedy" if "greedy" in labels else labels[0]
    chosen = [r for r in rows if r["decoding"] == label][:n]
    names = list(dict.fromkeys(name for r in chosen for name in r["responses"]))
    table = [[escape(_prompt_text(r["prompt"]))] + [_response_cell(r["responses"].get(m)) for m in names]
             for r in chosen]
    return f"<p>Decoding {escape(label)}.</p>" + _table(["prompt"] + names, table)


def _training_samples(sft: Path | None, ppo: Path | None, n: int) -> str | None:
    """SFT vs PPO from their training-time samples.jsonl (last logged step each), on shared prompts."""
    def last(run: Path | None) -> dict[str, dict]:
        rows = _read_jsonl(run / "samples.jsonl") if run else []
        final = max((r.get("step", 0) for r in rows), default=None)
        return {_prompt_text(r["prompt"]): r for r in rows if r.get("step", 0) == final}

    before, after = last(sft), last(ppo)
    shared = [p for p in after if p in before][:n]
    if not shared:
        return None
    rows = [[escape(p), _response_cell(before[p]), _response_cell(after[p])] for p in shared]
    return "<p>From the runs' logged samples.</p>" + _table(["prompt", "SFT", "PPO"], rows)


def _samples_section(runs: dict[str, Path], n: int) -> str:
    html = _eval_samples(runs["eval"], n) if "eval" in runs else None
    html = html or _training_samples(runs.get("sft"), runs.get("ppo"), n)
    return html or _missing("No side-by-side samples: give an eval run (samples.jsonl), or SFT and PPO runs whose "
                            "logged samples share prompts.")


# ---------------------------------------------------------------------------------------- entry point
def write_report(out_html: str | Path, runs: dict[str, str | Path | None], extra: dict | None = None) -> Path:
    """Write the report to `out_html` and return its path.

    `runs`: stage → run directory, keys `sft`, `rm`, `ppo`, `eval` (any may be absent or None).
    `extra`: optional `title`, `notes` (text), `overoptimisation` (an `overoptimisation_study`
    result or its JSON path) and `n_samples` (side-by-side prompts shown, default 8).
    """
    extra = extra or {}
    paths = {k: Path(v) for k, v in (runs or {}).items() if v is not None}
    title = str(extra.get("title", "rlhfkit evaluation report"))
    sections = [
        ("Runs", _runs_section(paths)),
        ("PPO training curves", _safe(_ppo_section, paths.get("ppo"))),
        ("SFT loss", _safe(_sft_section, paths.get("sft"))),
        ("Reward model: accuracy and calibration", _safe(_rm_section, paths.get("rm"))),
        ("Win rates", _safe(_eval_section, paths.get("eval"))),
        ("Proxy vs gold reward (over-optimisation)", _safe(_overopt_section, extra.get("overoptimisation"))),
        ("Side-by-side responses", _safe(_samples_section, paths, int(extra.get("n_samples", DEFAULT_SAMPLE_ROWS)))),
    ]
    notes = f"<p>{escape(str(extra['notes']))}</p>" if extra.get("notes") else ""
    body = "".join(f"<h2>{escape(name)}</h2>\n{html}\n" for name, html in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{notes}\n{body}</body></html>\n")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
