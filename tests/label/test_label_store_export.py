"""Store (migrations, SQLite pragmas), project validation, export round trips and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from labelkit import candidate_sets, make_setup
from sqlalchemy import text
from typer.testing import CliRunner

from rlhfkit.data.schemas import PreferencePair, Ranking, Rating
from rlhfkit.label import projects, store
from rlhfkit.label.answers import VoteIn
from rlhfkit.label.assign import authenticate, next_task, submit_vote
from rlhfkit.label.export import export_records, write_records


def test_migrations_match_table_definitions(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.metadata)
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert diff == []
    assert version == "0002"
    store.upgrade(engine)  # idempotent on an up-to-date store


def test_upgrade_from_0001_keeps_data_and_adds_the_lease_index(db_url):
    """A store made before assignment leases (revision 0001) upgrades in place, with its votes,
    and downgrades back."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    engine = store.make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store.__file__).with_name("migrations")))

    def migrate(step, rev):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, rev)

    def lease_index():
        return "ix_assignment_status_issued" in {
            i["name"] for i in inspect(engine).get_indexes("assignment")}

    migrate(command.upgrade, "0001")
    assert not lease_index()
    # Settings as an older rlhfkit stored them: no assignment_ttl_minutes key.
    old = {k: v for k, v in projects._settings_json(projects.ProjectSettings()).items()
           if k != "assignment_ttl_minutes"}
    with engine.begin() as conn:
        conn.execute(store.project.insert().values(
            id=1, name="old", kind="pairwise", guidelines_md="", settings=old, seed=0,
            created_at=0.0))
    with engine.connect() as conn:
        settings = projects.load_settings(projects.project_row(conn, "old").settings)
    assert settings.assignment_ttl_minutes == projects.DEFAULT_ASSIGNMENT_TTL_MINUTES
    store.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        assert projects.project_row(conn, "old").settings == old
    assert lease_index()
    migrate(command.downgrade, "0001")
    assert not lease_index()
    engine.dispose()


def test_sqlite_pragmas(tmp_path):
    engine = store.open_store(store.default_url(tmp_path))
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == store.SQLITE_BUSY_TIMEOUT_MS


def test_admin_token_created_once_and_only_hash_stored(engine):
    token = projects.ensure_admin_token(engine)
    assert token and projects.ensure_admin_token(engine) is None
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT value FROM setting")).scalar()
        assert stored == projects.hash_token(token) and token not in stored
        assert projects.is_admin_token(conn, token) and not projects.is_admin_token(conn, "x")
    new = projects.rotate_admin_token(engine)
    with engine.connect() as conn:
        assert projects.is_admin_token(conn, new) and not projects.is_admin_token(conn, token)


@pytest.mark.parametrize("kind, k, fragment", [
    ("bws", 3, "bws needs 4–9"), ("ranking", 10, "ranking needs 2–9"), ("pairwise", 1, "≥ 2"),
    ("nope", 2, "unknown kind"),
])
def test_project_validation(engine, kind, k, fragment):
    with pytest.raises(projects.ProjectError, match=fragment):
        projects.create_project(engine, "p", kind, candidate_sets(1, k))


def test_project_validation_gold_and_ab(engine):
    with pytest.raises(projects.ProjectError, match="gold_share is 0"):
        projects.create_project(engine, "p", "pairwise", candidate_sets(2, gold={0: [1, 0]}))
    sets = candidate_sets(1, k=2)
    sets[0].candidates[0].provenance.model = None
    with pytest.raises(projects.ProjectError, match="provenance.model"):
        projects.create_project(engine, "p", "ab_eval", sets)
    projects.create_project(engine, "p", "pairwise", candidate_sets(1))
    with pytest.raises(projects.ProjectError, match="exists already"):
        projects.create_project(engine, "p", "pairwise", candidate_sets(1))


def _vote_everything(engine, names, vote_for):
    for name, token in names.items():
        with engine.connect() as conn:
            who = authenticate(conn, token)
        while True:
            with engine.begin() as conn:
                task = next_task(conn, who)
                if task is None:
                    break
                submit_vote(conn, who, task["task_id"], vote_for(name, task))


def test_pairwise_export_raw_and_aggregated(engine, tmp_path):
    s = make_setup(engine, n=2, annotators=("a", "b", "c"),
                   settings=projects.ProjectSettings(overlap=3))

    def vote(name, task):  # everybody prefers candidate 0 ("… .0"); c with strength 3, a and b 1
        pos = "1" if task["responses"][0]["text"].endswith(".0") else "2"
        critique = {"edited": "an edited answer"} if name == "a" else {}
        return VoteIn(choice=pos, strength=3 if name == "c" else 1, **critique)

    _vote_everything(engine, s.tokens, vote)
    raw = export_records(engine, "proj", "raw")
    pairs = [r for r in raw if r.meta.get("source") != "edit"]
    edits = [r for r in raw if r.meta.get("source") == "edit"]
    assert len(pairs) == 6 and len(edits) == 2
    assert all(p.chosen.endswith(".0") and p.chosen_provenance.model == "sft" for p in pairs)
    assert sorted(p.margin for p in pairs) == pytest.approx([1 / 3] * 4 + [1.0] * 2)
    assert all(e.chosen == "an edited answer" and e.rejected.endswith(".0") for e in edits)
    assert {p.annotator for p in pairs} == {
        r["pseudonym"] for r in _pseudonyms(engine)}  # pseudonyms, never names
    agg = export_records(engine, "proj", "aggregated")
    assert len(agg) == 2
    # margin = mean signed strength margin = (1/3 + 1/3 + 1) / 3
    assert all(a.margin == pytest.approx(5 / 9) and a.meta["agreement"] == 1.0 for a in agg)
    out = tmp_path / "pairs.jsonl"
    assert write_records(raw, out) == 8
    back = [PreferencePair.model_validate_json(line) for line in out.read_text().splitlines()]
    assert back == raw


def _pseudonyms(engine):
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            text("SELECT name, pseudonym FROM annotator"))]


def test_ranking_and_rating_export_and_parquet(engine, tmp_path):
    s = make_setup(engine, kind="ranking", n=1, k=3, annotators=("a", "b"))

    def rank(name, task):  # a ranks by candidate index; b ties the last two
        order = [int(r["text"][-1]) for r in task["responses"]]  # candidate index per position
        pos = {c: p + 1 for p, c in enumerate(order)}
        groups = [[pos[0]], [pos[1]], [pos[2]]] if name == "a" else [[pos[0]], [pos[1], pos[2]]]
        return VoteIn(ranking=groups)

    _vote_everything(engine, s.tokens, rank)
    raw = export_records(engine, "proj", "raw")
    assert sorted(r.ranks for r in raw) == [[1, 2, 2], [1, 2, 3]]
    assert all(isinstance(r, Ranking) and r.responses[0].endswith(".0") for r in raw)
    (agg,) = export_records(engine, "proj", "aggregated")
    assert agg.ranks == [1, 2, 3]
    from rlhfkit.data.io import read_records

    for name in ("r.parquet", "r_ds"):  # the RM trainer's reader gets the records back intact
        write_records(raw, tmp_path / name, kind="ranking")
        back, _ = read_records(tmp_path / name, "ranking")
        assert back == raw


def test_rating_export(tmp_path):
    engine = store.open_store(store.default_url(tmp_path))
    s = make_setup(engine, kind="rating", n=1, k=2, annotators=("a", "b", "c"),
                   settings=projects.ProjectSettings(overlap=3))
    _vote_everything(engine, s.tokens, lambda name, task: VoteIn(rating={"a": 2, "b": 4, "c": 5}[name]))
    raw = export_records(engine, "proj", "raw")
    assert len(raw) == 6 and all(isinstance(r, Rating) for r in raw)
    agg = export_records(engine, "proj", "aggregated")
    assert [r.rating for r in agg] == [4, 4]  # median of 2, 4, 5


def test_ab_eval_report(tmp_path):
    engine = store.open_store(store.default_url(tmp_path))
    s = make_setup(engine, kind="ab_eval", n=4, annotators=("a", "b"),
                   settings=projects.ProjectSettings(overlap=2))

    def vote(name, task):  # a always prefers ppo (candidate 1); b says tie
        if name == "b":
            return VoteIn(choice="tie")
        return VoteIn(choice="1" if task["responses"][0]["text"].endswith(".1") else "2")

    _vote_everything(engine, s.tokens, vote)
    from rlhfkit.label.report import project_report

    rep = project_report(engine, "proj")
    (pair,) = rep["ab_eval"]["pairs"]
    # models sorted: ppo vs sft; 4 wins for ppo + 4 ties -> (4 + 2) / 8
    assert (pair["model_a"], pair["model_b"], pair["n"], pair["ties"]) == ("ppo", "sft", 8, 4)
    assert pair["win_rate"] == pytest.approx(0.75)
    assert rep["agreement"]["raw"] == 0.0 and rep["agreement"]["raw_without_ties"] is None
    from rlhfkit.label.cli import app

    text = CliRunner().invoke(app, ["stats", "proj", "--dir", str(tmp_path)]).output  # the summary shows it too
    assert "A/B ppo vs sft: win rate 0.750" in text and "n 8, ties 4" in text


def test_cli_round_trip(tmp_path):
    from rlhfkit.label.cli import app

    cands = tmp_path / "c.jsonl"
    cands.write_text("".join(cs.model_dump_json() + "\n" for cs in candidate_sets(3)))
    d = ["--dir", str(tmp_path / "proj")]
    run = CliRunner().invoke
    r = run(app, ["create-project", "demo", "--candidates", str(cands), "--overlap", "2",
                  "--assignment-ttl-minutes", "5", *d])
    assert r.exit_code == 0
    with store.open_store(store.default_url(tmp_path / "proj")).connect() as conn:
        assert projects.project_row(conn, "demo").settings["assignment_ttl_minutes"] == 5
    r = run(app, ["serve", "--rate-limit-burst", "0", *d])  # refused before anything starts
    assert r.exit_code == 1 and "burst ≥ 1" in r.output
    r = run(app, ["add-annotator", "demo", "ann", *d])
    assert r.exit_code == 0 and "#token=" in r.output
    assert run(app, ["add-batch", "demo", "--candidates", str(cands), *d]).output.startswith("added 3")
    r = run(app, ["stats", "demo", "--json", *d])
    assert json.loads(r.output)["tasks"] == 6
    assert run(app, ["revoke", "demo", "ann", *d]).exit_code == 0
    assert run(app, ["revoke", "demo", "nobody", *d]).exit_code == 1
    r = run(app, ["export", "demo", "--out", str(tmp_path / "o.parquet"), *d])
    assert r.exit_code == 0 and "wrote 0 records" in r.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_id": "x"}\n')
    r = run(app, ["add-batch", "demo", "--candidates", str(bad), *d])
    assert r.exit_code != 0 and "bad.jsonl:1" in r.output


def test_background_checkpoints_move_the_wal_off_the_request_path(tmp_path):
    engine = store.open_store(store.default_url(tmp_path))
    stop = store.checkpoint_in_background(engine, interval_s=0.05)
    try:
        with engine.connect() as conn:  # a request's connection never checkpoints itself
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
        db = tmp_path / store.DB_FILENAME
        before = db.stat().st_size
        with engine.begin() as conn:
            conn.execute(store.setting.insert(), [{"key": f"k{i}", "value": "x" * 1000}
                                                  for i in range(2000)])
        deadline = time.time() + 10
        while db.stat().st_size <= before and time.time() < deadline:
            time.sleep(0.02)
        assert db.stat().st_size > before + 1_000_000  # the thread copied the pages in
    finally:
        stop()
        engine.dispose()
