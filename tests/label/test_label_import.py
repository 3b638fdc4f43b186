"""Importing candidate sets and creating projects: bad input is refused with an error naming the
file, the line and the field, and nothing is stored that annotators would never be shown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from labelkit import candidate_sets
from rlhfkit.label import projects, store
from rlhfkit.label.cli import app

DOCS = Path(__file__).parents[2] / "docs" / "annotation.md"


def _set(pid: str, texts=("x", "y"), models=("sft", "ppo"), gold=None) -> dict:
    row = {"prompt_id": pid, "prompt": "hi?",
           "candidates": [{"text": t, "provenance": {"model": m}} for t, m in zip(texts, models)]}
    if gold is not None:
        row["meta"] = {"gold": gold}
    return row


def _write(tmp_path: Path, rows: list, name: str = "c.jsonl") -> Path:
    """One JSON object per line; a str row is written as is (blank lines, broken JSON)."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _create(engine, path: Path, kind: str = "pairwise", **settings) -> projects.BatchAdded:
    sets, source = projects.read_candidate_file(path)
    return projects.create_project(engine, "p", kind, sets, settings=projects.ProjectSettings(
        **settings), source=source)


def _cli(tmp_path: Path, *args: str):
    result = CliRunner().invoke(app, [*args, "--dir", str(tmp_path / "store")])
    # A refusal goes through the CLI's error path (exit 1), never a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _tasks(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(store.task.select().order_by(store.task.c.id)).all()


# 1. A first batch of gold sets only would give annotators nothing to do.

def test_all_gold_first_batch_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path, [_set(f"g{i}", gold=[1.0, 0.0]) for i in range(3)])
    r = _cli(tmp_path, "create-project", "p", "--candidates", str(path), "--gold-share", "0.1")
    assert r.exit_code == 1
    assert f"{path}: every candidate set carries meta.gold" in r.output
    assert "mix the gold sets into an ordinary candidates file" in r.output
    mixed = _write(tmp_path, [_set("g", gold=[1.0, 0.0]), _set("a")], "mixed.jsonl")
    r = _cli(tmp_path, "create-project", "p", "--candidates", str(mixed), "--gold-share", "0.1")
    assert r.exit_code == 0, r.output


# 2. Rating gold is compared with the annotator's 1–5 rating, so it must be one.

@pytest.mark.parametrize("bad", [0.83, -1.4, 0, 6, 2.5])
def test_rating_gold_must_be_an_integer_from_1_to_5(engine, tmp_path, bad):
    path = _write(tmp_path, [_set("a"), _set("b", gold=[4, bad])])
    with pytest.raises(projects.ProjectError,
                       match=re.escape(f"{path}:2: meta.gold[1]: {bad!r} is not a rating")):
        _create(engine, path, "rating", gold_share=0.5)


def test_rating_gold_on_the_scale_is_kept(engine, tmp_path):
    path = _write(tmp_path, [_set("a"), _set("b", gold=[4, 1.0])])
    _create(engine, path, "rating", gold_share=0.5)
    assert [t.gold_answer for t in _tasks(engine) if t.is_gold] == [{"rating": 4}, {"rating": 1}]


# 3. Gold values that are not finite numbers.

@pytest.mark.parametrize("bad", ["high", None, math.nan, math.inf, -math.inf, True, "0.5"])
def test_gold_values_must_be_finite_numbers(engine, tmp_path, bad):
    path = _write(tmp_path, [_set("a"), "", _set("b", gold=[1.0, bad])])
    with pytest.raises(projects.ProjectError, match=re.escape(f"{path}:3: meta.gold[1]: ")):
        _create(engine, path, gold_share=0.5)


def test_gold_of_the_wrong_length_names_the_line(engine, tmp_path):
    path = _write(tmp_path, [_set("a"), _set("b", gold=[1.0])])
    with pytest.raises(projects.ProjectError, match=re.escape(f"{path}:2: meta.gold: must list")):
        _create(engine, path, gold_share=0.5)


# 4. Candidate sets that would become no task at all.

@pytest.mark.parametrize(("kind", "row", "why"), [
    ("rating", _set("b", texts=(), models=()), "rating needs ≥ 1 candidate"),
    ("pairwise", _set("b", texts=("x",)), "pairwise needs ≥ 2 candidates"),
])
def test_sets_that_give_no_task_are_refused(engine, tmp_path, kind, row, why):
    path = _write(tmp_path, [_set("a"), row])
    with pytest.raises(projects.ProjectError, match=re.escape(f"{path}:2: prompt_id 'b': {why}")):
        _create(engine, path, kind)
    assert _tasks(engine) == []  # nothing half-imported


def test_ab_eval_sets_from_one_model_are_left_out_and_named(engine, tmp_path):
    """`rlhfkit sample` keeps one copy of a text two variants share, so a set can end up with
    candidates from one model: it gives no A/B task, is counted, and the CLI names it."""
    path = _write(tmp_path, [_set("a"), _set("b", models=("sft", "sft")), _set("c", texts=("x",), models=("sft",))])
    added = _create(engine, path, "ab_eval")
    assert (added.tasks, added.sets_without_task) == (1, ["b", "c"]) and len(_tasks(engine)) == 1
    result = _cli(tmp_path, "create-project", "q", "--kind", "ab_eval", "--candidates", str(path))
    assert result.exit_code == 0 and "1 tasks" in result.output
    assert "left out 2 candidate sets whose candidates all come from one model" in result.output
    assert "'b', 'c'" in result.output
    only_one_model = _write(tmp_path, [_set("b", models=("sft", "sft"))], "one.jsonl")
    with pytest.raises(projects.ProjectError, match=f"{only_one_model}: no set gives a task"):
        projects.add_batch(engine, "p", *projects.read_candidate_file(only_one_model))


def test_empty_file_is_refused(engine, tmp_path):
    path = _write(tmp_path, [""])
    with pytest.raises(projects.ProjectError, match=re.escape(f"{path}: no candidate sets")):
        _create(engine, path)


# 5. Errors carry the file, the real line (blank lines count) and the field.

def test_duplicate_candidate_texts_name_both_candidates(engine, tmp_path):
    path = _write(tmp_path, [_set("a"), "", _set("b", texts=("x", "y", "x"), models="abc")])
    with pytest.raises(projects.ProjectError) as err:
        _create(engine, path)
    assert str(err.value) == f"{path}:3: candidates[2].text: duplicate of candidates[0]"


def test_repeated_prompt_id_names_the_id_and_its_first_line(engine, tmp_path):
    path = _write(tmp_path, [_set("a"), "", _set("b"), _set("a", texts=("u", "v"))])
    with pytest.raises(projects.ProjectError) as err:
        _create(engine, path)
    assert str(err.value) == f"{path}:4: prompt_id 'a' repeats line 1"


def test_python_api_errors_number_the_sets(engine):
    sets = candidate_sets(3)
    sets[2].candidates[1].text = sets[2].candidates[0].text
    with pytest.raises(projects.ProjectError,
                       match=re.escape("<candidate_sets>:3: candidates[1].text: duplicate")):
        projects.create_project(engine, "p", "pairwise", sets)


def test_invalid_record_names_line_and_field(tmp_path):
    path = _write(tmp_path, [_set("a"), {"prompt_id": "b", "prompt": "hi?",
                                         "candidates": [{"text": 1}]}])
    with pytest.raises(projects.ProjectError,
                       match=re.escape(f"{path}:2: candidates[0].text: Input should be")):
        projects.read_candidate_file(path)


def test_non_utf8_line_is_a_cli_error_with_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    latin1 = json.dumps(_set("b", texts=("caf\u00e9", "y")), ensure_ascii=False).encode("latin-1")
    path.write_bytes(json.dumps(_set("a")).encode() + b"\n" + latin1 + b"\n")
    r = _cli(tmp_path, "create-project", "p", "--candidates", str(path))
    assert r.exit_code == 1 and f"{path}:2: not UTF-8" in r.output
    r = _cli(tmp_path, "add-batch", "p", "--candidates", str(path))
    assert r.exit_code == 1 and f"{path}:2: not UTF-8" in r.output


# 6. Settings the report and the assignment rely on.

@pytest.mark.parametrize("bad", [
    {"min_gold": 0}, {"gold_threshold": -0.1}, {"gold_threshold": 1.5},
    {"gold_threshold": math.nan}, {"min_seconds": -1.0}, {"min_seconds": math.nan},
    {"repeat_gap": 0}, {"repeat_gap": -3}, {"strength_margins": (0.0, 0.5, math.inf, 1.0)},
    {"strength_margins": (0.0, math.nan, 0.5, 1.0)},
])
def test_settings_out_of_range_are_refused(engine, bad):
    with pytest.raises(projects.ProjectError, match=next(iter(bad))):
        projects.create_project(engine, "p", "pairwise", candidate_sets(2),
                                settings=projects.ProjectSettings(**bad))


def test_boundary_settings_are_accepted(engine):
    edge = projects.ProjectSettings(min_gold=1, gold_threshold=1.0, min_seconds=0.0, repeat_gap=1)
    assert projects.create_project(engine, "p", "pairwise", candidate_sets(2), settings=edge)


# 7. Strength flags on kinds that ask no strength.

@pytest.mark.parametrize("kind", ["ranking", "rating", "bws"])
@pytest.mark.parametrize("flag", ["--strength", "--no-strength"])
def test_strength_flags_are_refused_for_kinds_without_strength(tmp_path, kind, flag):
    path = _write(tmp_path, [_set("a", texts="abcd", models="wxyz")])
    r = _cli(tmp_path, "create-project", "p", "--candidates", str(path), "--kind", kind, flag)
    assert r.exit_code == 1 and "--strength/--no-strength apply to pairwise and ab_eval" in r.output
    assert _cli(tmp_path, "create-project", "p", "--candidates", str(path), "--kind",
                kind).exit_code == 0


@pytest.mark.parametrize(("flags", "asked"), [((), True), (("--strength",), True),
                                              (("--no-strength",), False)])
def test_strength_flag_sets_pairwise_projects(tmp_path, flags, asked):
    path = _write(tmp_path, [_set("a")])
    assert _cli(tmp_path, "create-project", "p", "--candidates", str(path), *flags).exit_code == 0
    with store.open_store(store.default_url(tmp_path / "store")).connect() as conn:
        assert projects.project_row(conn, "p").settings["with_strength"] is asked


# 8. Store URLs and export paths the CLI cannot use.

def test_export_to_an_unknown_suffix_is_a_cli_error(tmp_path):
    path = _write(tmp_path, [_set("a")])
    assert _cli(tmp_path, "create-project", "p", "--candidates", str(path)).exit_code == 0
    r = _cli(tmp_path, "export", "p", "--out", str(tmp_path / "x.txt"))
    assert r.exit_code == 1 and "cannot tell the format from the name" in r.output
    assert not (tmp_path / "x.txt").exists()


def test_postgres_scheme_means_postgresql():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        with pytest.raises(store.StoreURLError, match=r"rlhfkit\[postgres\]"):
            store.make_engine("postgres://u@h/db")
        return
    engine = store.make_engine("postgres://u@h/db")  # builds the engine, connects to nothing
    assert engine.url.drivername == "postgresql+psycopg" and engine.url.host == "h"


@pytest.mark.parametrize(("url", "says"), [
    ("nosuchdb://u:secret@h/db", "unsupported store URL nosuchdb://u:***@h/db"),
    ("postgres://u:secret@127.0.0.1:1/db", "cannot open the store postgres://u:***@127.0.0.1:1/db"),
])
def test_bad_store_urls_are_cli_errors(tmp_path, url, says):
    if url.startswith("postgres:"):
        pytest.importorskip("psycopg")
    path = _write(tmp_path, [_set("a")])
    r = _cli(tmp_path, "create-project", "p", "--candidates", str(path), "--db", url)
    assert r.exit_code == 1 and says in r.output and "secret" not in r.output


# 9. The plain-HTTP warning and the docs.

@pytest.mark.parametrize(("host", "warned"), [
    ("127.0.0.1", False), ("::1", False), ("localhost", False), ("LOCALHOST.", False),
    ("0.0.0.0", True), ("192.168.1.5", True), ("example.org", True), ("myhost", True)])
def test_plain_http_warning_for_any_non_loopback_host(tmp_path, monkeypatch, host, warned):
    from rlhfkit.label import server

    monkeypatch.setattr(server, "run", lambda *a, **kw: None)
    r = _cli(tmp_path, "serve", "--host", host)
    assert r.exit_code == 0 and ("tokens travel in clear" in r.output) is warned


def test_docs_name_every_cli_option_and_setting():
    text = DOCS.read_text(encoding="utf-8")
    group = typer.main.get_command(app)
    missing = [f"{name} {opt}" for name, cmd in group.commands.items() for p in cmd.params
               for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--") and opt not in text]
    missing += [f"ProjectSettings.{f}" for f in projects.ProjectSettings.__dataclass_fields__
                if f != "extra" and f"`{f}`" not in text]
    assert missing == []
    assert "left out of all human figures and exports" not in text  # --include-judges exists
