"""Votes to records without silent loss: split majorities, blank texts, edits on every kind,
strength in projects without it, and the aggregated margin of votes without a strength.
Candidate j of a task has the text "answer <i>.<j>", so a test can vote by candidate index."""

from __future__ import annotations

import pytest
from labelkit import make_setup
from sqlalchemy import update

from rlhfkit.data.schemas import PreferencePair, Ranking, Rating
from rlhfkit.label import projects, store
from rlhfkit.label.answers import AnswerError, VoteIn, canonical_answer
from rlhfkit.label.assign import authenticate, next_task, submit_vote
from rlhfkit.label.export import export_project

MARGINS = projects.ProjectSettings().strength_margins  # (0, 1/3, 2/3, 1)


def _vote(engine, token: str, answer_of) -> None:
    """`token`'s annotator votes on their next task; `answer_of(pos)` gets {candidate: shown
    position} and returns the VoteIn fields."""
    with engine.begin() as conn:
        who = authenticate(conn, token)
        task = next_task(conn, who)
        pos = {int(r["text"][-1]): r["position"] for r in task["responses"]}
        submit_vote(conn, who, task["task_id"], VoteIn(**answer_of(pos)))


def _pair(winner: int | str, **extra):
    """Pairwise vote for candidate `winner` (0 / 1) or 'tie' / 'both_bad'."""
    return lambda pos: {"choice": str(pos[winner]) if isinstance(winner, int) else winner, **extra}


# 1. A split majority is exported as a tie, and what has no record is counted.

def test_aggregated_pairwise_split_is_a_tie_marked_split(engine):
    s = make_setup(engine, n=2)
    for name, winner in (("alice", 0), ("bob", 1)):  # task 1: 1–1
        _vote(engine, s.tokens[name], _pair(winner))
    for name in ("alice", "bob"):  # task 2: both for candidate 1
        _vote(engine, s.tokens[name], _pair(1, strength=3))
    result = export_project(engine, "proj", "aggregated")
    split, agreed = sorted(result.records, key=lambda r: r.meta["task_id"])
    assert (split.tie, split.margin, split.meta["split"], split.meta["agreement"]) == (
        True, None, True, 0.5)
    assert {split.chosen, split.rejected} == {"answer 0.0", "answer 0.1"}
    assert (agreed.chosen, agreed.tie, agreed.meta["split"]) == ("answer 1.1", False, False)
    assert result.left_out == 0


def test_not_rankable_tasks_are_counted_not_dropped(engine):
    s = make_setup(engine, kind="ranking", n=2, k=3)
    for name in ("alice", "bob"):  # task 1: nobody can rank it
        _vote(engine, s.tokens[name], lambda pos: {"not_rankable": True})
    for name in ("alice", "bob"):  # task 2: one says not rankable, one ranks
        _vote(engine, s.tokens[name], lambda pos, n=name: {"not_rankable": True} if n == "alice"
              else {"ranking": [[pos[0]], [pos[1]], [pos[2]]]})
    raw = export_project(engine, "proj", "raw")
    assert (len(raw.records), raw.left_out, raw.left_out_what) == (1, 3, "not-rankable votes without a ranking record")
    agg = export_project(engine, "proj", "aggregated")
    assert [r.ranks for r in agg.records] == [[1, 2, 3]]
    assert (agg.left_out, agg.left_out_what) == (1, "tasks whose every vote was not-rankable")


# 2. Blank critique / edit: refused at vote time; an old stored one does not break the export.

@pytest.mark.parametrize("body", [
    {"choice": "1", "edited": "   "}, {"choice": "1", "critique": "\n\t "},
    {"choice": "1", "edited": ""},
])
def test_blank_critique_or_edit_is_422_and_not_stored(engine, client_for, body):
    s = make_setup(engine)
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json=body)
    assert r.status_code == 422 and "blank" in r.text
    assert c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"] == t  # still open


def test_export_survives_a_blank_edit_stored_before_the_check(engine):
    s = make_setup(engine, n=1)
    _vote(engine, s.tokens["alice"], _pair(0))
    with engine.begin() as conn:  # as an older version stored it
        conn.execute(update(store.assignment).where(store.assignment.c.status == "voted")
                     .values(edited="  \n"))
    (rec,) = export_project(engine, "proj", "raw").records
    assert rec.chosen == "answer 0.0" and "source" not in rec.meta


# 3. An edit is edit ≻ each response the annotator put first, in the project's record kind.

def _edits(engine):
    raw = export_project(engine, "proj", "raw").records
    return [r for r in raw if r.meta.get("source") == "edit"], [
        r for r in raw if r.meta.get("source") != "edit"]


@pytest.mark.parametrize("choice, rejected", [
    (0, ["answer 0.0"]), ("tie", ["answer 0.0", "answer 0.1"]),
    ("both_bad", ["answer 0.0", "answer 0.1"]),
])
def test_pairwise_edit_is_preferred_to_each_response_put_first(engine, choice, rejected):
    s = make_setup(engine, n=1)
    _vote(engine, s.tokens["alice"], _pair(choice, edited="a fixed answer"))
    edits, votes = _edits(engine)
    assert len(votes) == 1
    assert all(isinstance(e, PreferencePair) and e.chosen == "a fixed answer" and not e.tie
               for e in edits)
    assert sorted(e.rejected for e in edits) == rejected
    assert [e.rejected_provenance.seed for e in sorted(edits, key=lambda e: e.rejected)] == [
        int(t[-1]) for t in rejected]  # the provenance of the response it improves on


@pytest.mark.parametrize("kind, k, answer_of, rejected, n_votes", [
    ("ranking", 3, lambda pos: {"ranking": [[pos[1]], [pos[0], pos[2]]]}, ["answer 0.1"], 1),
    ("ranking", 3, lambda pos: {"ranking": [[pos[2], pos[0]], [pos[1]]]},
     ["answer 0.0", "answer 0.2"], 1),
    ("ranking", 3, lambda pos: {"not_rankable": True},
     ["answer 0.0", "answer 0.1", "answer 0.2"], 0),
    ("bws", 4, lambda pos: {"best": pos[2], "worst": pos[0]}, ["answer 0.2"], 1),
])
def test_ranking_and_bws_edit_is_a_two_response_ranking(engine, kind, k, answer_of, rejected,
                                                         n_votes):
    s = make_setup(engine, kind=kind, n=1, k=k)
    _vote(engine, s.tokens["alice"], lambda pos: {**answer_of(pos), "edited": "a fixed answer"})
    edits, votes = _edits(engine)
    assert len(votes) == n_votes
    assert all(isinstance(e, Ranking) and e.ranks == [1, 2] and e.responses[0] == "a fixed answer"
               for e in edits)
    assert sorted(e.responses[1] for e in edits) == rejected
    assert all(e.meta["shown_order"] is None and len(v.meta["shown_order"]) == k for e in edits for v in votes)


def test_rating_edit_travels_in_meta(engine):
    s = make_setup(engine, kind="rating", n=1, annotators=("alice",),
                   settings=projects.ProjectSettings(overlap=1))
    _vote(engine, s.tokens["alice"], lambda pos: {"rating": 2, "edited": "a fixed answer"})
    (rec,) = export_project(engine, "proj", "raw").records
    assert isinstance(rec, Rating) and rec.meta["edited"] == "a fixed answer"


@pytest.mark.parametrize("edited", ["answer 0.1\n", " answer 0.0"])  # the winner's text, the loser's
def test_an_edit_equal_to_a_shown_response_adds_no_comparison(engine, edited):
    s = make_setup(engine, n=1)
    _vote(engine, s.tokens["alice"], _pair(1, edited=edited))
    edits, votes = _edits(engine)
    assert (edits, len(votes)) == ([], 1)


# 4. A project without strength refuses it.

def test_canonical_answer_refuses_strength_without_it():
    assert canonical_answer("pairwise", VoteIn(choice="1"), [1, 0], with_strength=False)[
        "winner"] == 1
    with pytest.raises(AnswerError, match="strength"):
        canonical_answer("pairwise", VoteIn(choice="1", strength=2), [1, 0], with_strength=False)
    assert canonical_answer("pairwise", VoteIn(choice="1", strength=2), [1, 0])["strength"] == 2


def test_no_strength_project_refuses_strength_over_http(engine, client_for):
    s = make_setup(engine, settings=projects.ProjectSettings(overlap=2, with_strength=False))
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    url = f"/api/v1/tasks/{t['task_id']}/vote"
    r = c.post(url, headers=s.h("alice"), json={"choice": "1", "strength": 3})
    assert r.status_code == 422 and "strength" in r.json()["detail"]
    assert c.post(url, headers=s.h("alice"), json={"choice": "1"}).status_code == 200


# 5. Aggregated margin: a vote without a strength is unknown, not the strongest.

@pytest.mark.parametrize("votes, margin", [
    ({"a": (0, 1), "b": (0, None)}, MARGINS[1]),  # b's omitted strength left out: 1/3, not 2/3
    ({"a": (0, 0), "b": (0, None)}, MARGINS[0]),  # "negligibly better" stays 0
    ({"a": (0, None), "b": (0, None)}, None),  # nobody gave one
    ({"a": (0, 3), "b": (0, None), "c": ("tie", None)}, (MARGINS[3] + 0) / 2),  # tie counts 0
    ({"a": (0, 3), "b": (0, 2), "c": (1, None)}, (MARGINS[3] + MARGINS[2]) / 2),
])
def test_aggregated_margin_leaves_out_votes_without_strength(engine, votes, margin):
    s = make_setup(engine, n=1, annotators=tuple(votes),
                   settings=projects.ProjectSettings(overlap=len(votes)))
    for name, (winner, strength) in votes.items():
        extra = {} if strength is None else {"strength": strength}
        _vote(engine, s.tokens[name], _pair(winner, **extra))
    (rec,) = export_project(engine, "proj", "aggregated").records
    assert rec.chosen == "answer 0.0"
    assert rec.margin == (None if margin is None else pytest.approx(margin, rel=1e-9))


def test_aggregated_margin_without_strength_is_the_vote_share(engine):
    s = make_setup(engine, n=1, annotators=("a", "b", "c"),
                   settings=projects.ProjectSettings(overlap=3, with_strength=False))
    for name, winner in (("a", 0), ("b", 0), ("c", 1)):
        _vote(engine, s.tokens[name], _pair(winner))
    (rec,) = export_project(engine, "proj", "aggregated").records
    assert rec.margin == pytest.approx((2 - 1) / 3, rel=1e-9)
