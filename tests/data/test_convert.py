"""Conversions to pairs, checked against pairs written out by hand."""

from __future__ import annotations

import pytest

from rlhfkit.data import (
    Candidate,
    CandidateSet,
    Provenance,
    Ranking,
    Rating,
    SkipReport,
    rankings_to_pairs,
    ratings_to_pairs,
    scores_to_pairs,
    scores_to_ranking,
)

PROV = [Provenance(model=f"m{i}", seed=i) for i in range(4)]
RANKING = Ranking(prompt="Q", prompt_id="q1", responses=["a", "b", "c", "d"], ranks=[2, 1, 2, 3],
                  annotator="ann", provenance=PROV, meta={"batch": 3})


def _summary(pairs):
    return [(p.chosen, p.rejected, p.tie, p.margin) for p in pairs]


def test_ranking_with_a_tie_dropped_and_counted():
    # ranks a=2, b=1, c=2, d=3: b beats everyone, a and c tie, both beat d.
    skips = SkipReport()
    pairs = rankings_to_pairs([RANKING], ties="drop", skips=skips)
    assert _summary(pairs) == [("b", "a", False, None), ("a", "d", False, None), ("b", "c", False, None),
                               ("b", "d", False, None), ("c", "d", False, None)]
    assert skips.as_dict()["by_reason"] == {"tie": 1}
    assert "'a' and 'c' tie (rank 2)" in skips.examples["tie"][0]


def test_ranking_with_a_tie_kept():
    pairs = rankings_to_pairs([RANKING], ties="keep")
    assert len(pairs) == 6
    assert [(p.chosen, p.rejected) for p in pairs if p.tie] == [("a", "c")]


def test_ranking_pairs_keep_ids_provenance_and_ranks():
    first = rankings_to_pairs([RANKING])[0]
    assert (first.prompt, first.prompt_id, first.annotator) == ("Q", "q1", "ann")
    assert (first.chosen_provenance, first.rejected_provenance) == (PROV[1], PROV[0])
    assert first.meta == {"batch": 3, "rank_chosen": 1, "rank_rejected": 2}


def _rating(prompt, response, rating, annotator="a1", prompt_id=None, **kw):
    return Rating(prompt=prompt, response=response, rating=rating, annotator=annotator, prompt_id=prompt_id, **kw)


def test_ratings_gap_becomes_margin():
    ratings = [
        _rating("P", "x", 5, prompt_id="p1", provenance=PROV[0]), _rating("P", "y", 2, prompt_id="p1"),
        _rating("P", "x", 3, annotator="a2", prompt_id="p1"), _rating("P", "z", 4, prompt_id="p1"),
        _rating("hello", "w", 3),                                     # no other response: unpaired
        _rating("hello", "u", 1, prompt_id="p3"), _rating("hello", "v", 5, prompt_id="p3"),
    ]
    skips = SkipReport()
    pairs = ratings_to_pairs(ratings, margin_scale=0.5, skips=skips)
    # x: mean (5+3)/2 = 4; y: 2; z: 4. x>y by 2 → margin 1.0; x=z tie dropped; z>y by 2 → 1.0;
    # v>u by 4 → 2.0.
    assert _summary(pairs) == [("x", "y", False, 1.0), ("z", "y", False, 1.0), ("v", "u", False, 2.0)]
    assert [p.prompt_id for p in pairs] == ["p1", "p1", "p3"]
    # x was rated by a1 and a2, so the x-y pair has no single annotator; z-y is a1's alone.
    assert [p.annotator for p in pairs] == [None, "a1", "a1"]
    assert pairs[0].chosen_provenance == PROV[0]
    assert pairs[0].meta == {"rating_chosen": 4.0, "rating_rejected": 2.0}
    assert skips.as_dict()["by_reason"] == {"tie": 1, "unpaired": 1}


def test_ratings_ties_kept_with_zero_margin():
    ratings = [_rating("P", "x", 3), _rating("P", "y", 3), _rating("P", "z", 1)]
    pairs = ratings_to_pairs(ratings, ties="keep")
    assert _summary(pairs) == [("x", "y", True, 0.0), ("x", "z", False, 2.0), ("y", "z", False, 2.0)]


def test_ratings_group_by_chat_prompt_too():
    chat = [{"role": "user", "content": "hi"}]
    ratings = [Rating(prompt=chat, response="a", rating=5), Rating(prompt=chat, response="b", rating=4),
               Rating(prompt="hi", response="c", rating=1)]
    pairs = ratings_to_pairs(ratings)
    assert _summary(pairs) == [("a", "b", False, 1.0)]


CANDS = CandidateSet(prompt_id="c1", prompt="Q", meta={"task": "t"},
                     candidates=[Candidate(text="a", provenance=PROV[0]), Candidate(text="b", provenance=PROV[1]),
                                 Candidate(text="c", provenance=PROV[2])])


def test_scores_to_ranking_shares_ranks_on_ties():
    ranking = scores_to_ranking(CANDS, [0.5, 2.0, 0.5], annotator="gold")
    assert (ranking.responses, ranking.ranks) == (["a", "b", "c"], [2, 1, 2])
    assert (ranking.prompt_id, ranking.annotator, ranking.provenance) == ("c1", "gold", PROV[:3])
    assert ranking.meta == {"task": "t", "scores": [0.5, 2.0, 0.5]}


def test_scores_to_pairs_with_margin():
    pairs = scores_to_pairs(CANDS, [0.5, 2.0, 0.5], margin_scale=2.0, annotator="gold")
    # b beats a and c by 1.5 each → margin 3.0; a-c tie dropped.
    assert _summary(pairs) == [("b", "a", False, 3.0), ("b", "c", False, 3.0)]
    assert (pairs[1].chosen_provenance, pairs[1].rejected_provenance) == (PROV[1], PROV[2])
    assert pairs[0].meta == {"task": "t", "score_chosen": 2.0, "score_rejected": 0.5}
    assert pairs[0].annotator == "gold"


def test_bad_arguments():
    with pytest.raises(ValueError, match="ties must be 'drop' or 'keep'"):
        rankings_to_pairs([RANKING], ties="half")
    with pytest.raises(ValueError, match="2 scores for 3 candidates"):
        scores_to_pairs(CANDS, [1.0, 2.0])
