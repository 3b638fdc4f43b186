"""Labelling candidate sets with a judge: schema, shown order, agreement with gold, judges."""

import itertools
import json
import math
import sys

import pytest

from rlhfkit.config.base import ConfigError, load_config, validate_config
from rlhfkit.config.judge import SIMULATED_TEMPERATURE, JudgeLabelConfig
from rlhfkit.data.errors import DataError
from rlhfkit.data.io import read_records, write_records
from rlhfkit.data.schemas import Candidate, CandidateSet, Provenance
from rlhfkit.eval.label_auto import label_candidates
from rlhfkit.tasks import DEFAULT_ANNOTATOR_TEMPERATURE

K = 4



def make_sets(task, n: int, k: int = K) -> list[CandidateSet]:
    """Candidate sets from the task's demonstration writer (no model needed)."""
    sets = []
    for record in task.prompts("train", n):
        texts = list(dict.fromkeys(task.sample_demos(record.prompt, k + 2, seed=1)))[:k]
        cands = [Candidate(text=t, finished=(j != 1), provenance=Provenance(model=f"demo-{j % 2}", seed=j))
                 for j, t in enumerate(texts)]
        sets.append(CandidateSet(prompt_id=record.id, prompt=record.prompt, candidates=cands, meta=record.meta))
    return sets


@pytest.fixture(scope="module")
def candidates(task, tmp_path_factory):
    path = tmp_path_factory.mktemp("cands") / "candidates.jsonl"
    write_records(path, make_sets(task, 300))
    return path


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    """A scoring module on sys.path: word count (minus 5 when unfinished), logging each call."""
    (tmp_path / "tl_judge.py").write_text(
        "CALLS = []\n"
        "def words(items):\n"
        "    CALLS.append([r for _, r, _ in items])\n"
        "    return [len(r.split()) - (0 if f else 5) for _, r, f in items]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import tl_judge

    yield tl_judge
    sys.modules.pop("tl_judge", None)


def run(tmp_path, candidates, **fields):
    cfg = validate_config(JudgeLabelConfig, {"candidates": str(candidates), **fields,
                                             "run": {"out_dir": str(tmp_path / "run"), "progress": False}}, "test")
    summary = label_candidates(cfg)
    kind = {"pairwise": "pair", "ranking": "ranking", "rating": "rating"}[cfg.mode]
    records, _ = read_records(tmp_path / "run" / "labels.jsonl", kind=kind)
    return summary, records


def by_prompt(candidates):
    sets, _ = read_records(candidates, kind="candidates")
    return {cs.prompt_id: cs for cs in sets}


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_pairs_follow_schema_and_shown_order(tmp_path, candidates, task):
    summary, pairs = run(tmp_path, candidates, mode="pairwise", pairs="all", margin="strength")
    sets = by_prompt(candidates)
    assert len(pairs) == 300 * math.comb(K, 2) == summary["records"]
    seen = {}
    for pair in pairs:
        cs = sets[pair.prompt_id]
        a, b = pair.meta["shown_order"]
        c, r = pair.meta["candidate_index"]
        assert {a, b} == {c, r} and pair.annotator == "sim-0" and not pair.tie
        assert (pair.chosen, pair.rejected) == (cs.candidates[c].text, cs.candidates[r].text)
        assert pair.chosen_provenance == cs.candidates[c].provenance
        assert pair.rejected_provenance == cs.candidates[r].provenance
        # Strength from P(chosen ≻ rejected) = σ(Δg/τ), cut at 0.6 / 0.75 / 0.9; margin = level / 3.
        g = [task.gold_reward(cs.prompt, x.text, x.finished) for x in cs.candidates]
        p = sigmoid((g[c] - g[r]) / SIMULATED_TEMPERATURE)
        assert pair.meta["judge_p"] == pytest.approx(p, rel=1e-9)
        assert pair.strength == (p >= 0.6) + (p >= 0.75) + (p >= 0.9)
        assert pair.margin == pytest.approx(pair.strength / 3, abs=1e-12)
        seen.setdefault(pair.prompt_id, []).append((a, b))
    for shown in seen.values():  # every pair once, in the order of one permutation of the set
        order = [shown[0][0]] + [b for a, b in shown if a == shown[0][0]]
        assert sorted(order) == list(range(K))
        assert shown == [(order[x], order[y]) for x, y in itertools.combinations(range(K), 2)]
    assert len({tuple(s[0]) for s in seen.values()}) > 5  # orders really are shuffled


def test_simulated_agreement_matches_the_bayes_ceiling(tmp_path, candidates, task):
    summary, pairs = run(tmp_path, candidates, mode="pairwise")
    agree, expected, variance = [], [], 0.0
    for pair in pairs:
        finished = {pair.chosen: pair.chosen_provenance.seed != 1, pair.rejected: pair.rejected_provenance.seed != 1}
        g_c = task.gold_reward(pair.prompt, pair.chosen, finished[pair.chosen])
        g_r = task.gold_reward(pair.prompt, pair.rejected, finished[pair.rejected])
        agree.append(1.0 if g_c > g_r else 0.0 if g_c < g_r else 0.5)
        q = sigmoid(abs(g_c - g_r) / DEFAULT_ANNOTATOR_TEMPERATURE)
        expected.append(q)
        variance += q * (1 - q)
    n = len(pairs)
    assert summary["agreement_with_gold"] == pytest.approx(sum(agree) / n, rel=1e-12)
    assert summary["bayes_ceiling"] == pytest.approx(sum(expected) / n, rel=1e-12)
    # Independent Bernoulli(q) agreements: their mean lies within 4 standard errors of E = mean q.
    assert abs(sum(agree) / n - sum(expected) / n) < 4 * math.sqrt(variance) / n
    assert 0.6 < summary["bayes_ceiling"] < 0.95
    assert abs(summary["first_shown_win_rate"] - 0.5) < 4 * math.sqrt(0.25 / n)


def test_one_random_pair_per_set(tmp_path, candidates):
    summary, pairs = run(tmp_path, candidates, mode="pairwise", pairs="one")
    assert len(pairs) == 300 and len({p.prompt_id for p in pairs}) == 300
    shown = [tuple(sorted(p.meta["shown_order"])) for p in pairs]
    assert set(shown) == set(itertools.combinations(range(K), 2))  # all 6 pairs occur


def test_rankings_ratings_and_several_annotators(tmp_path, candidates, task):
    summary, rankings = run(tmp_path, candidates, mode="ranking", judge={"n_annotators": 3}, labels_per_set=2)
    assert len(rankings) == 600 and summary["by_annotator"] == {"sim-0": 200, "sim-1": 200, "sim-2": 200}
    sets = by_prompt(candidates)
    per_set = {}
    for r in rankings:
        cs = sets[r.prompt_id]
        assert r.responses == [c.text for c in cs.candidates] and sorted(r.meta["shown_order"]) == list(range(K))
        # At tie_eps = 0 only responses of exactly equal gold share a rank.
        g = [task.gold_reward(r.prompt, c.text, c.finished) for c in cs.candidates]
        assert all((r.ranks[i] == r.ranks[j]) == (g[i] == g[j]) for i, j in itertools.combinations(range(K), 2))
        per_set.setdefault(r.prompt_id, []).append(r)
    assert all(len({x.annotator for x in v}) == 2 for v in per_set.values())
    assert summary["bayes_ceiling"] is not None
    _, ratings = run(tmp_path, candidates, mode="rating")
    assert len(ratings) == 300 * K and all(1 <= x.rating <= 5 for x in ratings)
    assert all(x.meta["shown_order"][x.meta["shown_position"]] == x.meta["candidate_index"] for x in ratings)


def test_callable_judge_sees_the_shown_order(tmp_path, candidates, judge_module):
    summary, rankings = run(tmp_path, candidates, mode="ranking",
                            judge={"kind": "callable", "callable": "tl_judge:words", "batch_size": 4})
    called = [text for call in judge_module.CALLS for text in call]
    shown = [r.responses[i] for r in rankings for i in r.meta["shown_order"]]
    assert called == shown  # batch_size = K: one call per set, in shown order
    assert summary["judge"] == "fn:tl_judge:words" and summary["by_annotator"] == {"fn-0": 300}
    sets = by_prompt(candidates)
    for r in rankings:  # noiseless: ranks sort the scores, equal scores tie
        score = [len(c.text.split()) - (0 if c.finished else 5) for c in sets[r.prompt_id].candidates]
        for i, j in itertools.combinations(range(K), 2):
            assert (r.ranks[i] < r.ranks[j]) == (score[i] > score[j])
            assert (r.ranks[i] == r.ranks[j]) == (score[i] == score[j])


def test_callable_pairs_with_score_gap_and_fixed_rating_cuts(tmp_path, candidates, judge_module):
    judge = {"kind": "callable", "callable": "tl_judge:words"}
    _, pairs = run(tmp_path, candidates, mode="pairwise", margin="score_gap", judge=judge)
    sets = by_prompt(candidates)
    for p in pairs:
        cands = sets[p.prompt_id].candidates
        s = [len(c.text.split()) - (0 if c.finished else 5) for c in cands]
        c, r = p.meta["candidate_index"]
        assert p.tie == (s[c] == s[r]) and s[c] >= s[r]
        assert p.margin == (None if p.tie else s[c] - s[r])
    judge["rating_thresholds"] = [5, 10, 15, 20]
    _, ratings = run(tmp_path, candidates, mode="rating", judge=judge)
    for x in ratings:
        score = len(x.response.split()) - (0 if x.provenance.seed != 1 else 5)
        assert x.rating == 1 + sum(score > t for t in (5, 10, 15, 20))


def test_noisy_scoring_judge_and_determinism(tmp_path, candidates, judge_module):
    judge = {"kind": "callable", "callable": "tl_judge:words", "noise_temperature": 3.0}
    first, pairs_a = run(tmp_path / "a", candidates, mode="pairwise", judge=judge, seed=5)
    _, pairs_b = run(tmp_path / "b", candidates, mode="pairwise", judge=judge, seed=5)
    _, pairs_c = run(tmp_path / "c", candidates, mode="pairwise", judge=judge, seed=6)
    assert pairs_a == pairs_b and pairs_a != pairs_c
    assert not any(p.tie for p in pairs_a)  # BT draws never tie
    wrong = sum(len(p.chosen.split()) < len(p.rejected.split()) for p in pairs_a)
    assert 0 < wrong < len(pairs_a) / 2  # noise flips some, but fewer than half
    saved = json.loads((tmp_path / "a" / "run" / "summary.json").read_text())
    assert saved["records"] == first["records"] and (tmp_path / "a" / "run" / "config.yaml").exists()


def test_reward_model_judge(tmp_path, candidates, task):
    from rlhfkit.config.common import TinyModelConfig
    from rlhfkit.models.reward import RewardModel, load_reward_model
    from rlhfkit.models.tiny import build_tiny_causal_lm

    tiny = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=300, max_positions=128)
    model, tokenizer = build_tiny_causal_lm(tiny, task.corpus(500), seed=0)
    RewardModel.from_causal_lm(model, tokenizer, num_heads=2).save(tmp_path / "rm")
    few = tmp_path / "few.jsonl"
    write_records(few, make_sets(task, 8))
    summary, rankings = run(tmp_path, few, mode="ranking",
                            judge={"kind": "reward_model", "reward_model": str(tmp_path / "rm"), "head": 1})
    rm = load_reward_model(tmp_path / "rm")
    for r in rankings:
        cs = by_prompt(few)[r.prompt_id]
        scores = rm.score_texts([r.prompt] * K, r.responses, [c.finished for c in cs.candidates])[:, 1].tolist()
        assert r.ranks == [1 + sum(t > s for t in scores) for s in scores]
    assert summary["by_annotator"] == {"rm-0": 8}


def test_run_num_threads_sets_torch_threads(tmp_path, task, monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # the suite's 1 thread stays
    few = tmp_path / "few.jsonl"
    write_records(few, make_sets(task, 2))
    label_candidates(validate_config(JudgeLabelConfig, {"candidates": str(few), "run": {
        "out_dir": str(tmp_path / "run"), "progress": False, "num_threads": 3}}, "test"))
    assert calls == [3]


def test_bad_callable_path_is_a_clear_error(tmp_path, candidates):
    with pytest.raises(ValueError, match="cannot import module 'no_such_judge_module'"):
        run(tmp_path, candidates, judge={"kind": "callable", "callable": "no_such_judge_module:score"})


def test_too_small_sets_raise_or_are_counted(tmp_path, task):
    sets = make_sets(task, 4)
    sets[2] = sets[2].model_copy(update={"candidates": sets[2].candidates[:1]})
    path = tmp_path / "small.jsonl"
    write_records(path, sets)
    with pytest.raises(DataError, match="set 3 .* has 1 candidates; pairwise labels need 2"):
        run(tmp_path, path)
    summary, pairs = run(tmp_path, path, on_error="skip")
    assert summary["skipped"]["by_reason"] == {"too_few_candidates": 1} and summary["sets_labelled"] == 3


def test_config_checks():
    assert SIMULATED_TEMPERATURE == DEFAULT_ANNOTATOR_TEMPERATURE
    with pytest.raises(ConfigError, match="needs `task`"):
        validate_config(JudgeLabelConfig, {"candidates": "x", "task": None}, "t")
    with pytest.raises(ConfigError, match="labels_per_set=2 exceeds"):
        validate_config(JudgeLabelConfig, {"candidates": "x", "labels_per_set": 2}, "t")
    with pytest.raises(ConfigError, match="needs judge.callable"):
        validate_config(JudgeLabelConfig, {"candidates": "x", "judge": {"kind": "callable"}}, "t")
    with pytest.raises(ConfigError, match="score_gap needs a scoring judge"):
        validate_config(JudgeLabelConfig, {"candidates": "x", "margin": "score_gap"}, "t")


@pytest.mark.parametrize("fields, message", [
    ({"mode": "ranking", "margin": "strength"}, "margin=strength is not read with mode=ranking"),
    ({"mode": "rating", "pairs": "one"}, "pairs=one is not read with mode=rating"),
    ({"mode": "ranking", "strength_cuts": [0.55, 0.7, 0.8]},
     r"strength_cuts=\[0.55, 0.7, 0.8\] is not read with mode=ranking; remove it \(default \[0.6, 0.75, 0.9\]\)"),
    ({"mode": "rating", "strength_margins": [0, 0.5, 0.75, 1]}, "strength_margins=.* not read with mode=rating"),
    ({"mode": "pairwise", "strength_cuts": [0.55, 0.7, 0.8]}, "strength_cuts=.* not read with margin=none"),
    ({"mode": "ranking", "judge": {"kind": "callable", "callable": "m:f", "rating_thresholds": [0, 1, 2, 3]}},
     r"judge.rating_thresholds=\[0.0, 1.0, 2.0, 3.0\] is not read with mode=ranking"),
])
def test_pair_options_are_refused_where_nothing_reads_them(fields, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(JudgeLabelConfig, {"candidates": "x", **fields}, "t")
    # Through load_config every default is in the data (so "set"): defaults must still pass, and
    # so must the options where they are read.
    load_config(JudgeLabelConfig, None, ["candidates=x", f"mode={fields['mode']}"])
    cfg = validate_config(JudgeLabelConfig, {"candidates": "x", "pairs": "one", "margin": "strength",
                                             "strength_cuts": [0.55, 0.7, 0.8]}, "t")
    assert cfg.strength_cuts == (0.55, 0.7, 0.8)


@pytest.mark.parametrize("judge, message", [
    ({"temperature": 0.5, "noise_temperature": 0.3}, "judge.noise_temperature=0.3 is not read with judge.kind=simulated"),
    ({"head": 1}, "judge.head=1 is not read with judge.kind=simulated"),
    ({"batch_size": 8}, "judge.batch_size=8 is not read with judge.kind=simulated"),
    ({"kind": "callable", "callable": "m:f", "temperature": 0.5}, "judge.temperature=0.5 is not read with judge.kind=callable"),
    ({"kind": "callable", "callable": "m:f", "reward_model": "rm"}, "judge.reward_model=rm is not read"),
    ({"kind": "reward_model", "reward_model": "rm", "callable": "m:f"}, "judge.callable=m:f is not read"),
])
def test_judge_options_are_refused_where_the_kind_ignores_them(judge, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(JudgeLabelConfig, {"candidates": "x", "judge": judge}, "t")
    # What each kind reads still passes: τ for the simulated judge, noise, cuts and head for an RM judge.
    validate_config(JudgeLabelConfig, {"candidates": "x", "judge": {"temperature": 0.5}}, "t")
    validate_config(JudgeLabelConfig, {"candidates": "x", "mode": "rating", "judge": {
        "kind": "reward_model", "reward_model": "rm", "head": 1, "noise_temperature": 0.3, "batch_size": 8,
        "rating_thresholds": [0, 1, 2, 3]}}, "t")
