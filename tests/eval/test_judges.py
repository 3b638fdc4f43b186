"""Judges: the preference protocol, both-order judging, loading a judge by import path."""

import math
import sys

import pytest
import torch

from rlhfkit.eval.judges import (
    CallableJudge,
    GoldJudge,
    RewardModelJudge,
    SimulatedJudge,
    judge_both_orders,
    load_callable,
    preference_from_scores,
)
from rlhfkit.tasks import SimulatedAnnotator

PROMPT = "write a positive short review of a hotel : the room was"
GOOD = "clean and quiet . the staff were friendly and the breakfast was great ."
BAD = "awful . the bed was dirty and the food was terrible ."



def test_preference_from_scores_hand_values():
    assert preference_from_scores(2.0, 1.0) == 1.0
    assert preference_from_scores(1.0, 2.0) == 0.0
    assert preference_from_scores(1.0, 1.05, tie_eps=0.1) == 0.5
    # σ(1) = 1 / (1 + e^-1) = 0.7310585786; σ(-4) with τ = 0.5 and Δ = -2.
    assert preference_from_scores(2.0, 1.0, temperature=1.0) == pytest.approx(0.7310585786, rel=1e-9)
    assert preference_from_scores(0.0, 2.0, temperature=0.5) == pytest.approx(0.0179862100, rel=1e-8)
    assert preference_from_scores(0.0, 1000.0, temperature=1.0) == pytest.approx(0.0, abs=1e-300)


def test_gold_judge_follows_the_gold_reward(task):
    g_good, g_bad = task.gold_reward(PROMPT, GOOD), task.gold_reward(PROMPT, BAD)
    assert g_good > g_bad
    judge = GoldJudge(task)
    assert judge.prefer(PROMPT, GOOD, BAD) == 1.0 and judge.prefer(PROMPT, BAD, GOOD) == 0.0
    assert judge.prefer(PROMPT, GOOD, GOOD) == 0.5
    soft = GoldJudge(task, temperature=0.85)
    assert soft.prefer(PROMPT, GOOD, BAD) == pytest.approx(1 / (1 + math.exp(-(g_good - g_bad) / 0.85)), rel=1e-12)
    # An unfinished response is scored as such (the ending term of the gold reward).
    assert judge.scores([(PROMPT, GOOD, False)]) == [task.gold_reward(PROMPT, GOOD, False)]


class FirstPositionBiased:
    """A judge that mixes a correct hard preference q with "always pick the first shown":
    prefer(a, b) = (1 − β)·q(a, b) + β."""

    name = "biased"

    def __init__(self, inner, beta):
        self.inner, self.beta = inner, beta

    def prefer(self, prompt, a, b, finished_a=True, finished_b=True):
        return (1 - self.beta) * self.inner.prefer(prompt, a, b, finished_a, finished_b) + self.beta


def test_both_orders_cancels_position_bias(task):
    judge = FirstPositionBiased(GoldJudge(task), beta=0.4)
    # Asked once, the answer depends on the order: 1.0 shown (good, bad), 0.4 shown (bad, good).
    assert judge.prefer(PROMPT, GOOD, BAD) == pytest.approx(1.0)
    assert judge.prefer(PROMPT, BAD, GOOD) == pytest.approx(0.4)
    # Both orders: ½[1.0 + 1 − 0.4] = 0.8 = (1 − β)·1 + β/2, and the two orders now sum to 1.
    assert judge_both_orders(judge, PROMPT, GOOD, BAD) == pytest.approx(0.8, rel=1e-12)
    assert judge_both_orders(judge, PROMPT, BAD, GOOD) == pytest.approx(0.2, rel=1e-12)
    # A judge that only ever picks the first response says nothing: exactly ½.
    always_first = FirstPositionBiased(GoldJudge(task), beta=1.0)
    assert judge_both_orders(always_first, PROMPT, GOOD, BAD) == pytest.approx(0.5, rel=1e-12)
    # An unbiased judge is unchanged.
    assert judge_both_orders(GoldJudge(task), PROMPT, GOOD, BAD) == 1.0


def test_simulated_judge_votes_follow_bradley_terry(task):
    tau = 2.0  # a high τ so the pair is far from certain
    annotator = SimulatedAnnotator(task, temperature=tau, seed=3)
    judge = SimulatedJudge(annotator)
    n = 4000
    votes = [judge.prefer(PROMPT, GOOD, BAD) for _ in range(n)]
    assert set(votes) <= {0.0, 1.0}
    p = 1 / (1 + math.exp(-(task.gold_reward(PROMPT, GOOD) - task.gold_reward(PROMPT, BAD)) / tau))
    # Monte-Carlo mean of n Bernoulli(p) votes: 4 standard errors.
    assert abs(sum(votes) / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_callable_judge_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(
        "def word_count(items):\n"
        "    return [len(response.split()) - (0 if finished else 100) for _, response, finished in items]\n"
        "class Holder:\n"
        "    @staticmethod\n"
        "    def negative(items):\n"
        "        return [-len(r.split()) for _, r, _ in items]\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    judge = CallableJudge(load_callable("my_judges:word_count"))
    assert judge.scores([("p", "a b c", True), ("p", "a b", False)]) == [3.0, -98.0]
    assert judge.prefer("p", "a b c", "a b") == 1.0
    assert judge.prefer("p", "a b c", "a b c d", True, False) == 1.0  # the unfinished one is penalised
    assert judge.prefer("p", "x y", "a b") == 0.5
    assert CallableJudge(load_callable("my_judges:Holder.negative")).prefer("p", "a", "a b") == 1.0
    sys.modules.pop("my_judges", None)


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "must be written 'module:function'"),
    ("rlhfkit_no_such_module_xyz:score", "cannot import module 'rlhfkit_no_such_module_xyz'"),
    ("json:no_such_function", "'json' has no attribute 'no_such_function'"),
    ("math:pi", "float object is not callable"),
])
def test_bad_import_path_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        load_callable(spec)


def test_callable_judge_checks_the_number_of_scores():
    judge = CallableJudge(lambda items: [1.0], name="short")
    with pytest.raises(ValueError, match="judge 'short' returned 1 scores for 2 responses"):
        judge.prefer("p", "a", "b")


class FakeRewardModel:
    """Two heads: head 0 = length in characters, head 1 = minus that."""

    def score_texts(self, prompts, responses, finished=None, batch_size=64):
        length = torch.tensor([float(len(r)) for r in responses])
        return torch.stack([length, -length], dim=1)


def test_reward_model_judge_reads_its_head():
    assert RewardModelJudge(FakeRewardModel(), head=0).prefer("p", "long answer", "short") == 1.0
    assert RewardModelJudge(FakeRewardModel(), head=1).prefer("p", "long answer", "short") == 0.0
    soft = RewardModelJudge(FakeRewardModel(), head=0, temperature=4.0)
    # Δ = 11 − 5 = 6 characters, τ = 4: σ(1.5) = 0.8175744762.
    assert soft.prefer("p", "long answer", "short") == pytest.approx(0.8175744762, rel=1e-9)
