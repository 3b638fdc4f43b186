"""Agreement and aggregation statistics against hand-worked values (worked in the comments)."""

from __future__ import annotations

import math

import pytest

from rlhfkit.label import agreement as ag
from rlhfkit.label.answers import VoteIn, canonical_answer, gold_answer, gold_score
from rlhfkit.label.report import pair_labels

# Three raters, four units; labels 0 / 1 (winner) or "tie".
UNITS = {
    "u1": {"A": 0, "B": 0, "C": 1},
    "u2": {"A": 1, "B": 1},
    "u3": {"A": "tie", "B": 0},
    "u4": {"A": 0, "B": 0},
}


def test_raw_agreement_with_and_without_ties():
    # u1: 1 of 3 pairs agree, u2: 1/1, u3: 0/1, u4: 1/1  -> 3 / 6
    assert ag.raw_agreement(UNITS) == (0.5, 6)
    # without ties u3 keeps one label (no pair): 3 / 5
    assert ag.raw_agreement(UNITS, exclude=frozenset({"tie"})) == (0.6, 5)


def test_cohen_kappa_hand():
    # A = [0, 1, tie, 0], B = [0, 1, 0, 0]; p_o = 3/4;
    # p_e = (2/4)(3/4) + (1/4)(1/4) + (1/4)(0) = 7/16; κ = (12/16 - 7/16) / (9/16) = 5/9
    assert ag.cohen_kappa(UNITS, "A", "B") == pytest.approx(5 / 9, rel=1e-9)
    assert ag.cohen_kappa(UNITS, "A", "C") is None  # one shared unit only


def test_fleiss_kappa_hand():
    # modal count n = 2 -> units u2, u3, u4 with rows over ("0", "1", "tie"):
    # [0,2,0], [1,0,1], [2,0,0]; P_i = 1, 0, 1 -> P̄ = 2/3;
    # p_j = 3/6, 2/6, 1/6 -> P_e = 14/36; κ = (2/3 - 7/18) / (11/18) = 5/11
    kappa, used = ag.fleiss_kappa(UNITS)
    assert used == 3
    assert kappa == pytest.approx(5 / 11, rel=1e-9)


def test_krippendorff_alpha_nominal_hand():
    # Coincidences: o00 = 1 (u1) + 2 (u4) = 3, o01 = o10 = 1 (u1), o11 = 2 (u2),
    # o0t = ot0 = 1 (u3); n_0 = 5, n_1 = 3, n_t = 1, n = 9.
    # D_o = 4/9; D_e = (2·15 + 2·5 + 2·3) / (9·8) = 46/72; α = 1 - (32/72)/(46/72) = 7/23
    assert ag.krippendorff_alpha(UNITS, "nominal") == pytest.approx(7 / 23, rel=1e-9)


def test_krippendorff_alpha_interval_perfect_and_missing():
    units = {1: {"a": 1, "b": 1}, 2: {"a": 3, "b": 3}, 3: {"a": 5}}
    assert ag.krippendorff_alpha(units, "interval") == pytest.approx(1.0)
    assert ag.krippendorff_alpha({1: {"a": 2}}, "interval") is None


def test_kendall_tau_hand():
    # [1,2,3] vs [1,3,2]: 2 concordant, 1 discordant -> 1/3
    # [1,1,3] vs [1,2,3]: C = 2, D = 0, one pair tied in the first only: 2 / sqrt(3·2)
    tau, n = ag.mean_kendall_tau({"t1": {"a": [1, 2, 3], "b": [1, 3, 2]},
                                  "t2": {"a": [1, 1, 3], "b": [1, 2, 3]},
                                  "t3": {"a": [1, 1, 1], "b": [1, 2, 3]}})  # undefined: skipped
    assert n == 2
    assert tau == pytest.approx((1 / 3 + 2 / math.sqrt(6)) / 2, rel=1e-9)


def test_wilson_interval_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = ag.wilson_interval(8, 10)
    ref = proportion_confint(8, 10, alpha=0.05, method="wilson")
    assert (lo, hi) == pytest.approx(ref, rel=1e-6)
    bias = ag.position_bias([True] * 8 + [False] * 2, [2] * 6 + [4] * 4)
    assert bias["p_first_wins"] == 0.8 and bias["chance"] == pytest.approx((6 / 2 + 4 / 4) / 10)


def test_win_rate_ties_half_hand():
    # s = [1, 1, .5, 0]: mean .625; sd (ddof 1) = sqrt(.6875 / 3); half = 1.96·sd / 2
    out = ag.win_rate([1, 1, 0.5, 0])
    half = ag.Z95 * math.sqrt(0.6875 / 3) / 2
    assert out["win_rate"] == 0.625 and out["ties"] == 1 and out["n"] == 4
    assert out["ci95"] == pytest.approx((0.625 - half, 1.0), rel=1e-9)


def test_bradley_terry_and_plackett_luce_two_items():
    # Two items, 0 beats 1 three times and loses once: MLE θ0 - θ1 = ln 3.
    theta = ag.bradley_terry(2, [(0, 1)] * 3 + [(1, 0)], alpha=1e-9)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), rel=1e-4)
    # A tie counts one win each way: 3 wins + 1 tie vs 1 loss -> ln(4/2)
    theta = ag.bradley_terry(2, [(0, 1)] * 3 + [(1, 0)], ties=[(0, 1)], alpha=1e-9)
    assert theta[0] - theta[1] == pytest.approx(math.log(2), rel=1e-4)
    pl = ag.plackett_luce(2, [[0, 1], [0, 1], [1, 0]], alpha=1e-9)
    assert pl[0] - pl[1] == pytest.approx(math.log(2), rel=1e-4)


def test_majority():
    assert ag.majority([1, 1, 0]) == (1, 2 / 3)
    assert ag.majority([1, 0]) == (None, 0.5)


def test_canonical_answers_map_positions_through_shown_order():
    # shown order [2, 0, 1]: position 1 shows candidate 2, position 2 candidate 0, 3 candidate 1
    ans = canonical_answer("ranking", VoteIn(ranking=[[2], [1, 3]]), [2, 0, 1])
    assert ans == {"ranks": [1, 2, 2], "not_rankable": False}
    assert canonical_answer("pairwise", VoteIn(choice="1", strength=1), [1, 0]) == {
        "winner": 1, "tie": False, "both_bad": False, "strength": 1, "first_shown_won": True}
    assert canonical_answer("bws", VoteIn(best=3, worst=1), [3, 2, 1, 0]) == {"best": 1, "worst": 3}


def test_pair_labels_and_gold_scores():
    assert pair_labels("ranking", {"ranks": [1, 2, 2]}, 3) == {(0, 1): 0, (0, 2): 0, (1, 2): "tie"}
    # best 2, worst 0 over 4: 2 beats everyone; 1 and 3 beat 0; (1, 3) unknown
    assert pair_labels("bws", {"best": 2, "worst": 0}, 4) == {
        (0, 2): 2, (1, 2): 2, (2, 3): 2, (0, 1): 1, (0, 3): 3}
    gold = gold_answer("ranking", [0.1, 0.9, 0.5])
    assert gold == {"ranks": [3, 1, 2]}
    # answer ranks [1, 2, 3]: pairs (0,1) wrong, (0,2) wrong, (1,2) right -> 1/3
    assert gold_score("ranking", {"ranks": [1, 2, 3]}, gold) == pytest.approx(1 / 3)
    assert gold_answer("pairwise", [2.0, 2.0]) == {"winner": None, "tie": True}
    assert gold_score("bws", {"best": 1, "worst": 2}, gold_answer("bws", [0, 5, 1, 2])) == 0.5
