"""`rlhfkit annotate …`: serve the annotation app and administer projects from the shell.

Every command works on one store: `--dir` (a project directory holding `annotation.db`, SQLite)
or `--db` (a database URL, e.g. `postgresql://user@host/db`). Whoever can run these commands
on the store is an admin; the HTTP admin API needs the admin token printed at first `serve`.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import NoReturn, Optional

import typer

from rlhfkit.label.ratelimit import DEFAULT_BURST, DEFAULT_PER_MINUTE, RateLimit

app = typer.Typer(help="Collect human preferences in the browser: projects, annotators, export.",
                  no_args_is_help=True)

DirOpt = typer.Option(Path("annotation"), "--dir", envvar="RLHFKIT_ANNOTATION_DIR",
                      help="Project directory holding the SQLite store.")
DbOpt = typer.Option(None, "--db", envvar="RLHFKIT_ANNOTATION_DB",
                     help="Database URL (overrides --dir), e.g. postgresql://user@host/db.")


def _engine(directory: Path, db: Optional[str]):
    """The store's engine; a bad URL, a missing driver or an unreachable database is a CLI error."""
    from sqlalchemy.exc import OperationalError

    from rlhfkit.label import store

    url = db or store.default_url(directory)
    try:
        return store.open_store(url)
    except store.StoreURLError as err:
        _fail(err)
    except OperationalError as err:
        _fail(ValueError(f"cannot open the store {store.redact(url)}: {err.orig}"))


def _is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost`; any other name may resolve off the machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_guidelines(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        _fail(ValueError(f"{path}: not UTF-8 (byte {err.start + 1}: {err.reason})"))


def _fail(err: Exception) -> NoReturn:
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def serve(directory: Path = DirOpt, db: Optional[str] = DbOpt,
          host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
          port: int = typer.Option(8000, help="TCP port."),
          rotate_admin_token: bool = typer.Option(
              False, "--rotate-admin-token", help="Issue a new admin token."),
          rate_limit_per_minute: float = typer.Option(
              DEFAULT_PER_MINUTE, help="Sustained API requests per minute per token (0 = no limit)."),
          rate_limit_burst: int = typer.Option(
              DEFAULT_BURST, help="API requests a token may send at once."),
          workers: int = typer.Option(
              1, min=1, help="Server processes sharing the store (pays off with PostgreSQL; on SQLite "
                             "one process was fastest in our benchmark).")) -> None:
    """Start the annotation server (FastAPI under uvicorn)."""
    from rlhfkit.label.server import run

    if not _is_loopback(host):
        typer.secho(f"warning: listening on {host}: put a TLS reverse proxy in front; tokens "
                    "travel in clear over plain HTTP", fg=typer.colors.YELLOW, err=True)
    try:
        limit = RateLimit(rate_limit_per_minute, rate_limit_burst)
    except ValueError as err:
        _fail(err)
    run(_engine(directory, db), host, port, rotate_admin_token=rotate_admin_token, rate_limit=limit,
        workers=workers)


@app.command("create-project")
def create_project(
    name: str = typer.Argument(..., help="Project name."),
    candidates: Path = typer.Option(..., exists=True, help="JSONL of CandidateSet records."),
    kind: str = typer.Option("pairwise", help="pairwise | ranking | rating | bws | ab_eval."),
    guidelines: Optional[Path] = typer.Option(None, exists=True, help="Markdown guidelines."),
    overlap: int = typer.Option(1, help="Annotations wanted per task."),
    gold_share: float = typer.Option(0.0, help="Share of items drawn from gold sets (meta.gold)."),
    repeat_share: float = typer.Option(0.0, help="Share of items repeated with swapped order."),
    assignment_ttl_minutes: Optional[float] = typer.Option(
        None, help="Minutes an annotator holds a task before it goes back to the pool; 0 = never "
                   "(default: 30)."),
    strength: Optional[bool] = typer.Option(
        None, help="Ask for preference strength (pairwise and ab_eval; default: ask)."),
    seed: int = typer.Option(0, help="Seed of shown orders, gold and repeat draws."),
    directory: Path = DirOpt, db: Optional[str] = DbOpt,
) -> None:
    """Create a project from a candidates file."""
    from rlhfkit.label import projects
    from rlhfkit.label.answers import KINDS, PAIR_KINDS

    if strength is not None and kind in KINDS and kind not in PAIR_KINDS:
        _fail(ValueError(f"--strength/--no-strength apply to {' and '.join(PAIR_KINDS)} only; "
                         f"a {kind} project asks no strength"))
    lease = {} if assignment_ttl_minutes is None else {"assignment_ttl_minutes": assignment_ttl_minutes}
    try:
        settings = projects.ProjectSettings(
            overlap=overlap, gold_share=gold_share, repeat_share=repeat_share,
            with_strength=strength is not False, **lease)
        md = _read_guidelines(guidelines) if guidelines else ""
        sets, source = projects.read_candidate_file(candidates)
        added = projects.create_project(_engine(directory, db), name, kind, sets, md, settings, seed,
                                        source)
    except projects.ProjectError as err:
        _fail(err)
    typer.echo(f"created {kind} project {name!r}: {added.tasks} tasks")
    _say_without_task(added)


@app.command("add-batch")
def add_batch(name: str = typer.Argument(..., help="Project name."),
              candidates: Path = typer.Option(..., exists=True, help="JSONL of CandidateSet."),
              directory: Path = DirOpt, db: Optional[str] = DbOpt) -> None:
    """Add candidate sets to a live project."""
    from rlhfkit.label import projects

    try:
        sets, source = projects.read_candidate_file(candidates)
        added = projects.add_batch(_engine(directory, db), name, sets, source)
    except projects.ProjectError as err:
        _fail(err)
    typer.echo(f"added {added.tasks} tasks to {name!r}")
    _say_without_task(added)


def _say_without_task(added) -> None:
    if added.sets_without_task:
        shown = ", ".join(map(repr, added.sets_without_task[:5]))
        more = f" and {len(added.sets_without_task) - 5} more" if len(added.sets_without_task) > 5 else ""
        typer.echo(f"left out {len(added.sets_without_task)} candidate sets whose candidates all come from "
                   f"one model (nothing to compare): {shown}{more}")


@app.command("add-annotator")
def add_annotator(project: str = typer.Argument(...), name: str = typer.Argument(...),
                  base_url: str = typer.Option("http://127.0.0.1:8000", help="For the invite link."),
                  directory: Path = DirOpt, db: Optional[str] = DbOpt) -> None:
    """Register an annotator and print their token and invite link (shown once)."""
    from rlhfkit.label import projects

    try:
        token = projects.add_annotator(_engine(directory, db), project, name)
    except projects.ProjectError as err:
        _fail(err)
    typer.echo(f"token for {name}: {token}\ninvite link: {base_url.rstrip('/')}/#token={token}")


@app.command()
def revoke(project: str = typer.Argument(...), name: str = typer.Argument(...),
           directory: Path = DirOpt, db: Optional[str] = DbOpt) -> None:
    """Revoke an annotator's token (their votes are kept)."""
    from rlhfkit.label import projects

    try:
        projects.revoke(_engine(directory, db), project, name)
    except projects.ProjectError as err:
        _fail(err)
    typer.echo(f"revoked {name} in {project!r}")


@app.command()
def stats(project: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
          directory: Path = DirOpt, db: Optional[str] = DbOpt) -> None:
    """Progress, agreement, position bias, gold accuracy and per-annotator flags."""
    from rlhfkit.label import projects
    from rlhfkit.label.report import project_report

    try:
        rep = project_report(_engine(directory, db), project)
    except projects.ProjectError as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(rep, indent=2))
        return
    a = rep["agreement"]
    typer.echo(f"{rep['project']} ({rep['kind']}): {rep['tasks_complete']}/{rep['tasks']} tasks "
               f"complete, {rep['votes']} votes, {rep['skips']} skips, "
               f"median {_f(rep['median_seconds'])} s/item")
    typer.echo(f"agreement: raw {_f(a['raw'])} (without ties {_f(a['raw_without_ties'])}), "
               f"Cohen κ {_f(a['cohen_kappa'])}, Fleiss κ {_f(a['fleiss_kappa'])}, "
               f"Krippendorff α {_f(a['krippendorff_alpha'])}"
               + (f", Kendall τ-b {_f(a['kendall_tau'])}" if a.get("kendall_tau") is not None else ""))
    typer.echo(f"P(first shown wins) {_f(rep['position_bias']['p_first_wins'])} "
               f"(chance {_f(rep['position_bias']['chance'])}), "
               f"self-consistency {_f(rep['self_consistency']['value'])}, "
               f"gold accuracy {_f(rep['gold']['accuracy'])}")
    for pair in (rep.get("ab_eval") or {}).get("pairs", []):
        typer.echo(f"A/B {pair['model_a']} vs {pair['model_b']}: win rate {_f(pair['win_rate'])} "
                   f"(95 % {pair['ci95']}, n {pair['n']}, ties {pair['ties']})")
    for judge, agreement in (rep["judge_agreement"] or {}).items():
        typer.echo(f"judge {judge}: agreement with people {_f(agreement['raw'])} "
                   f"(without ties {_f(agreement['raw_without_ties'])}, {agreement['pairs']} pairs)")
    for row in rep["annotator_stats"]:
        typer.echo(f"  {row['annotator']:<20} votes {row['votes']:>5}  median "
                   f"{_f(row['median_seconds'])} s  gold {_f(row['gold_accuracy'])}  "
                   f"{' '.join(row['flags'])}")


def _f(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.3f}"


@app.command()
def export(project: str = typer.Argument(...), out: Path = typer.Option(..., help="Output path."),
           what: str = typer.Option("raw", help="raw (per annotator) | aggregated (per task)."),
           fmt: Optional[str] = typer.Option(
               None, "--format", help="jsonl | json | parquet | datasets (default: from --out)."),
           include_judges: bool = typer.Option(
               False, "--include-judges", help="Also export `judge:` annotators."),
           directory: Path = DirOpt, db: Optional[str] = DbOpt) -> None:
    """Export votes as PreferencePair / Ranking / Rating records."""
    from rlhfkit.label import projects
    from rlhfkit.label.export import RECORD_KIND, export_project, write_records

    if what not in ("raw", "aggregated") or fmt not in (None, "jsonl", "json", "parquet", "datasets"):
        _fail(ValueError("--what is raw|aggregated and --format is jsonl|json|parquet|datasets"))
    if fmt is None:
        from rlhfkit.data.io import detect_format

        try:
            detect_format(out)
        except ValueError as err:  # a suffix that names no format: refuse before exporting
            _fail(err)
    try:
        engine = _engine(directory, db)
        with engine.connect() as conn:
            kind = RECORD_KIND[projects.project_row(conn, project).kind]
        result = export_project(engine, project, what, include_judges)
    except projects.ProjectError as err:
        _fail(err)
    n = write_records(result.records, out, fmt, kind)  # type: ignore[arg-type]
    typer.echo(f"wrote {n} records to {out}")
    if result.left_out:
        typer.echo(f"left out {result.left_out} {result.left_out_what}")
