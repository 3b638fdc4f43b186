"""Candidate sampling: K per prompt from model variants, provenance, de-duplication, determinism."""

import hashlib
import json
import re
from collections import Counter

import pytest
import yaml

from rlhfkit.config.base import ConfigError, validate_config
from rlhfkit.config.common import TinyModelConfig
from rlhfkit.config.sample import SampleConfig
from rlhfkit.data.io import read_records, write_records
from rlhfkit.data.schemas import Message, PromptRecord, Provenance
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, save_hf
from rlhfkit.models.tiny import build_tiny_causal_lm
from rlhfkit.rollout.candidates import Draw, VariantStats, build_set, sample_candidates
from rlhfkit.rollout.sampling import sample_responses
from rlhfkit.tasks import get_task

TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=300, max_positions=128)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two randomly initialised tiny models (an "SFT" and an "older PPO" checkpoint)."""
    root = tmp_path_factory.mktemp("models")
    corpus = get_task("reviews", seed=0).corpus(500)
    for name, seed in (("sft", 0), ("ppo", 1)):
        save_hf(*build_tiny_causal_lm(TINY, corpus, seed), root / name)
    return root


def sample(tmp_path, variants, **fields):
    cfg = validate_config(SampleConfig, {"variants": variants, "max_new_tokens": 8, "batch_size": 12,
                                         "prompts": {"n": 6}, **fields,
                                         "run": {"out_dir": str(tmp_path), "progress": False}}, "test")
    summary = sample_candidates(cfg)
    sets, _ = read_records(tmp_path / "candidates.jsonl", kind="candidates")
    return summary, sets


def variants(models):
    return [
        {"path": str(models / "sft"), "name": "sft-t1", "temperature": 1.0, "seed": 1, "samples_per_prompt": 2},
        {"path": str(models / "sft"), "name": "sft-greedy", "top_k": 1, "samples_per_prompt": 3},
        {"path": str(models / "ppo"), "name": "ppo-old", "checkpoint": "step-100", "temperature": 0.7,
         "top_p": 0.9, "seed": 4, "samples_per_prompt": 2},
    ]


def test_provenance_k_and_dedup(tmp_path, models):
    specs = {v["name"]: v for v in variants(models)}
    summary, sets = sample(tmp_path, variants(models), gold_scores=True)
    task = get_task("reviews", seed=0)
    assert (summary["prompts"], summary["k"], summary["candidates_sampled"]) == (6, 7, 42)
    assert [s.prompt_id for s in sets] == [p.id for p in task.prompts("train", 6)]
    for cs in sets:
        texts = [c.text for c in cs.candidates]
        assert len(set(texts)) == len(texts)
        n_filtered = sum(cs.meta["n_filtered"].values())
        assert cs.meta["n_sampled"] == 7 == len(texts) + cs.meta["n_duplicates"] + n_filtered
        per_variant = Counter(c.provenance.model for c in cs.candidates)
        # top_k = 1 draws the same text three times: at most one survives, two+ are duplicates.
        assert per_variant["sft-greedy"] <= 1 and cs.meta["n_duplicates"] >= 2
        for c in cs.candidates:
            spec, prov = specs[c.provenance.model], c.provenance
            assert (prov.temperature, prov.top_p, prov.top_k, prov.seed) == (
                spec.get("temperature", 1.0), spec.get("top_p", 1.0), spec.get("top_k", 0), spec.get("seed", 0))
            assert prov.checkpoint == spec.get("checkpoint", spec["path"]) and prov.max_new_tokens == 8
            assert prov.model_extra["sample_index"] < spec["samples_per_prompt"]
        assert cs.meta["gold"] == [task.gold_reward(cs.prompt, c.text, c.finished) for c in cs.candidates]
    kept = sum(len(cs.candidates) for cs in sets)
    assert summary["candidates_kept"] == kept
    assert summary["duplicates"] == sum(cs.meta["n_duplicates"] for cs in sets) >= 12
    assert sum(v["sampled"] for v in summary["variants"].values()) == 42
    assert summary["variants"]["sft-greedy"]["duplicates"] >= 12
    # The greedy variant's text is what greedy decoding gives.
    model, tok = load_causal_lm(models / "sft"), load_tokenizer(models / "sft")
    greedy = sample_responses(model, tok, [cs.prompt for cs in sets], max_new_tokens=8, greedy=True)
    for cs, g in zip(sets, greedy):
        assert [c.text for c in cs.candidates if c.provenance.model == "sft-greedy"] in ([g.text], [])
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["derived"]["k"] == 7 and written["variants"][2]["checkpoint"] == "step-100"
    assert json.loads((tmp_path / "summary.json").read_text())["candidate_sets"] == len(sets)


def texts_of(sets, model):
    return [[c.text for c in cs.candidates if c.provenance.model == model] for cs in sets]


def test_determinism_and_variant_independence(tmp_path, models):
    two = [variants(models)[0], variants(models)[2]]
    _, a = sample(tmp_path / "a", two)
    sample(tmp_path / "b", two)
    assert (tmp_path / "a" / "candidates.jsonl").read_bytes() == (tmp_path / "b" / "candidates.jsonl").read_bytes()
    reseeded = [two[0], {**two[1], "seed": 5}]
    _, c = sample(tmp_path / "c", reseeded)
    assert texts_of(a, "sft-t1") == texts_of(c, "sft-t1")  # a variant depends on its own seed only
    assert texts_of(a, "ppo-old") != texts_of(c, "ppo-old")


def test_prompt_file_and_unfinished_filter(tmp_path, models):
    prompts = [PromptRecord(prompt="write a positive short review of a hotel : the room", id="mine-1"),
               PromptRecord(prompt="write a negative long review of a book : the plot"),
               PromptRecord(prompt=[Message(role="user", content="write a positive short review of a movie : it")])]
    write_records(tmp_path / "prompts.jsonl", prompts)
    spec = [{"path": str(models / "sft"), "name": "sft", "samples_per_prompt": 4}]
    summary, sets = sample(tmp_path / "run", spec, prompts={"path": str(tmp_path / "prompts.jsonl"), "n": 3},
                           drop_unfinished=True, max_new_tokens=2)
    # With 2 new tokens nearly every response is cut short, so sets lose candidates and are dropped.
    assert all(c.finished for cs in sets for c in cs.candidates)
    finished = round(summary["variants"]["sft"]["finished_share"] * 12)
    assert summary["filtered"]["unfinished"] + summary["filtered"]["empty"] >= 12 - finished
    assert summary["candidate_sets"] + summary["sets_dropped"]["too_few_candidates"] == 3
    _, kept = sample(tmp_path / "run2", spec, prompts={"path": str(tmp_path / "prompts.jsonl"), "n": 3})
    expected_key = "p-" + hashlib.sha256(json.dumps(prompts[1].prompt).encode()).hexdigest()[:16]
    assert [cs.prompt_id for cs in kept] == ["mine-1", expected_key, kept[2].prompt_id]
    assert kept[2].prompt_id.startswith("p-") and isinstance(kept[2].prompt, list)


def draw(text, finished=True, model="m"):
    return Draw(text, finished, 3, Provenance(model=model))


def test_build_set_counts_what_it_leaves_out():
    cfg = validate_config(SampleConfig, {"variants": [{"path": "x", "samples_per_prompt": 5}],
                                         "drop_unfinished": True}, "test")
    record = PromptRecord(prompt="p", id="q1", meta={"topic": "hotel"})
    stats = {"m": VariantStats()}
    draws = [draw("a"), draw(""), draw("a"), draw("b", finished=False), draw("c")]
    cs, counts = build_set(record, draws, cfg, stats, gold=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert [c.text for c in cs.candidates] == ["a", "c"]
    assert counts == Counter({"duplicate": 1, "empty": 1, "unfinished": 1})
    assert cs.meta == {"topic": "hotel", "n_sampled": 5, "n_duplicates": 1, "n_filtered": {"empty": 1, "unfinished": 1}}
    assert (stats["m"].kept, stats["m"].duplicates, dict(stats["m"].filtered)) == (2, 1, {"empty": 1, "unfinished": 1})
    strict = cfg.model_copy(update={"min_candidates": 3, "gold_scores": True})
    none, counts = build_set(record, draws, strict, {"m": VariantStats()}, gold=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert none is None and counts["too_few_candidates"] == 1
    cs, _ = build_set(record, draws[:1] + draws[4:], strict.model_copy(update={"min_candidates": 2}),
                      {"m": VariantStats()}, gold=[1.0, 5.0])
    assert cs.meta["gold"] == [1.0, 5.0]


@pytest.mark.parametrize("spec, message", [
    ([{"path": "m", "samples_per_prompt": 1}], "K=1 responses per prompt"),
    ([{"path": "m", "name": "a", "samples_per_prompt": 5}, {"path": "m", "name": "b", "samples_per_prompt": 5}],
     "K=10 responses"),
    ([{"path": "m", "temperature": 0.7}, {"path": "m", "temperature": 1.0}], "share a name"),
])
def test_config_checks(spec, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(SampleConfig, {"variants": spec}, "test")


def test_min_candidates_above_k_is_a_config_error():
    spec = [{"path": "m", "samples_per_prompt": 3}]
    with pytest.raises(ConfigError, match=r"min_candidates=4 exceeds K=3"):
        validate_config(SampleConfig, {"variants": spec, "min_candidates": 4}, "test")
    assert validate_config(SampleConfig, {"variants": spec, "min_candidates": 3}, "test").min_candidates == 3


def test_gold_scores_on_foreign_prompts_fail_before_sampling(tmp_path, monkeypatch):
    from rlhfkit.rollout import candidates

    good = get_task("reviews", seed=0).prompts("train", 1)[0].prompt
    path = tmp_path / "prompts.jsonl"
    write_records(path, [PromptRecord(prompt=good), PromptRecord(prompt="tell me a joke", id="joke-1")])
    monkeypatch.setattr(candidates, "sample_all", lambda *args: pytest.fail("sampled before checking the prompts"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: prompt record 2 \(id 'joke-1'\): not a 'reviews' prompt"):
        sample(tmp_path / "run", [{"path": "m", "samples_per_prompt": 2}], gold_scores=True,
               prompts={"path": str(path), "n": 2})

