"""`evaluate_models` on tiny random models: the numbers must be self-consistent (a model's KL to
itself is 0, a model against itself wins half the time), and both-order judging must cancel a
judge's position bias."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from rlhfkit.config.base import ConfigError, validate_config
from rlhfkit.config.eval import EvalConfig
from rlhfkit.eval.evaluate import (Responses, ScoredJudge, _context, build_judge, comparison_scores,
                                   evaluate_models)
from rlhfkit.eval.judges import GoldJudge
from rlhfkit.rundir import Progress
from rlhfkit.tasks import get_task

N_PROMPTS = 8
BON_N = 4
# log 4 − 3/4, worked by hand (rlhf-details §2.1 table: 0.64).
BON4_KL = 1.3862943611198906 - 0.75


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from rlhfkit.config.common import TinyModelConfig
    from rlhfkit.models.loading import save_hf
    from rlhfkit.models.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("models")
    corpus = get_task("reviews", seed=0).corpus(500)
    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=256, max_positions=96)
    dirs = {}
    for seed, name in [(0, "a"), (1, "b")]:
        model, tokenizer = build_tiny_causal_lm(shape, corpus, seed)
        dirs[name] = str(save_hf(model, tokenizer, root / name))
    return dirs


@pytest.fixture(scope="module")
def bf16_dirs(tmp_path_factory):
    """A causal LM and a reward model saved in bf16: their config.json says `dtype: bfloat16`,
    which transformers 5 loads as bf16 unless told otherwise."""
    from rlhfkit.config.common import TinyModelConfig
    from rlhfkit.models.loading import save_hf
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.models.tiny import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("bf16")
    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=256, max_positions=96)
    model, tokenizer = build_tiny_causal_lm(shape, get_task("reviews", seed=0).corpus(500), 2)
    model = model.to(torch.bfloat16)
    lm = save_hf(model, tokenizer, root / "lm")
    RewardModel.from_causal_lm(model, tokenizer).save(root / "rm")
    return {"lm": str(lm), "rm": str(root / "rm")}


def _config(out_dir, models, **extra) -> EvalConfig:
    data = {"models": models, "prompts": {"n": N_PROMPTS}, "max_new_tokens": 8,
            "run": {"out_dir": str(out_dir), "progress": False, "device": "cpu"}, **extra}
    return validate_config(EvalConfig, data, "test")


@pytest.fixture(scope="module")
def evaluated(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    models = [{"name": "a", "path": model_dirs["a"]}, {"name": "a_again", "path": model_dirs["a"]},
              {"name": "b", "path": model_dirs["b"]},
              {"name": "bon", "path": model_dirs["a"], "best_of_n": BON_N, "bon_scorer": "gold"}]
    summary = evaluate_models(_config(out, models, perplexity={"n": 8}))
    return summary, out


def test_kl_of_a_model_to_itself_is_zero(evaluated):
    summary, _ = evaluated
    sampled = summary["decodings"]["T=1"]["models"]
    assert sampled["a"]["kl"] == 0.0 and sampled["a_again"]["kl"] == 0.0
    assert sampled["b"]["kl_std"] > 0  # different weights: per-sequence KL estimates are not all 0
    assert sampled["bon"]["kl"] == pytest.approx(BON4_KL, rel=1e-12)
    assert sampled["bon"]["kl_method"] == "analytic_bon"
    assert "kl" not in summary["decodings"]["greedy"]["models"]["a"]  # greedy responses are not draws from π


def test_model_against_itself_wins_half(evaluated):
    summary, _ = evaluated
    greedy = summary["decodings"]["greedy"]["win_rate"]["a_again"]
    # Identical weights + greedy decoding = identical responses: every comparison is a tie.
    assert (greedy["win_rate"], greedy["low"], greedy["high"], greedy["ties"]) == (0.5, 0.5, 0.5, N_PROMPTS)
    sampled = summary["decodings"]["T=1"]["win_rate"]["a_again"]
    assert sampled["low"] <= 0.5 <= sampled["high"]


def test_summary_is_consistent_with_samples(evaluated):
    summary, out = evaluated
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["decoding"] for r in rows] == ["greedy"] * N_PROMPTS + ["T=1"] * N_PROMPTS
    assert set(rows[0]["responses"]) == {"a", "a_again", "b"}  # best-of-n needs sampling
    assert set(rows[-1]["responses"]) == {"a", "a_again", "b", "bon"}
    for label in ("greedy", "T=1"):
        part = [r for r in rows if r["decoding"] == label]
        for name, metrics in summary["decodings"][label]["models"].items():
            entries = [r["responses"][name] for r in part]
            assert metrics["gold"] == pytest.approx(sum(e["gold"] for e in entries) / N_PROMPTS, rel=1e-12)
            assert metrics["eos_fraction"] == sum(e["finished"] for e in entries) / N_PROMPTS
            assert metrics["length_tokens"] == sum(e["num_tokens"] for e in entries) / N_PROMPTS
        wins = summary["decodings"][label]["win_rate"]["b"]
        scores = [r["responses"]["b"]["score_vs_baseline"] for r in part]
        assert wins["win_rate"] == pytest.approx(sum(scores) / N_PROMPTS, rel=1e-12)
    assert summary["decodings"]["greedy"]["temperature"] == 0.0
    assert summary["decodings"]["T=1"]["temperature"] == 1.0
    assert (out / "config.yaml").is_file() and summary["prompt_source"] == "task:reviews/test"


def test_best_of_n_by_gold_beats_its_base_model(evaluated):
    sampled = evaluated[0]["decodings"]["T=1"]
    assert sampled["models"]["bon"]["gold"] > sampled["models"]["a"]["gold"]
    bt = sampled["bradley_terry"]
    assert set(bt) == {"a", "a_again", "b", "bon"} and sum(bt.values()) == pytest.approx(0.0, abs=1e-9)
    assert bt["bon"] == max(bt.values())


def test_perplexity_is_reported_once_per_model(evaluated):
    models = evaluated[0]["models"]
    a, a_again, b = (models[k]["perplexity"] for k in ("a", "a_again", "b"))
    assert a == a_again and a["n"] == 8
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]), rel=1e-12)
    assert b["loss"] != a["loss"] and "perplexity" not in models["bon"]


class PositionBiasedJudge:
    """Prefers the longer response (q = 0.8 / 0.2, 0.5 for equal lengths) plus 0.15 for whichever
    response is shown first: one-order judging would be off by 0.15."""

    name = "biased"

    def prefer(self, prompt, a, b, finished_a=True, finished_b=True):
        q = 0.5 if len(a) == len(b) else (0.8 if len(a) > len(b) else 0.2)
        return q + 0.15


def test_both_order_judging_cancels_position_bias():
    judge = PositionBiasedJudge()
    longer = Responses(["a long answer", "x", "same"], [True] * 3, [3, 1, 1])
    shorter = Responses(["short", "a longer one", "same"], [True] * 3, [1, 3, 1])
    assert comparison_scores(judge, ["p"] * 3, longer, shorter) == pytest.approx([0.8, 0.2, 0.5], rel=1e-12)


def test_evaluate_models_judges_both_orders(model_dirs, tmp_path, monkeypatch):
    (tmp_path / "biased_judge_module.py").write_text(
        "class FirstIsBetter:\n    name = 'biased'\n"
        "    def prefer(self, prompt, a, b, finished_a=True, finished_b=True):\n        return 0.9\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "biased_judge_module", raising=False)
    models = [{"name": "a", "path": model_dirs["a"]}, {"name": "b", "path": model_dirs["b"]}]
    cfg = _config(tmp_path / "run", models, decodings=[{"greedy": True}], perplexity={"n": 0},
                  judge={"kind": "callable", "callable": "biased_judge_module:FirstIsBetter"})
    result = evaluate_models(cfg)["decodings"]["greedy"]["win_rate"]["b"]
    # A judge that always picks the first response: ½[0.9 + 1 − 0.9] = ½ on every prompt.
    assert result["win_rate"] == pytest.approx(0.5, rel=1e-12) and result["ties"] == N_PROMPTS


def test_scored_judge_matches_pairwise_verdicts():
    task = get_task("reviews", seed=0)
    prompt = task.prompts("test", 1)[0].prompt
    texts = ["the food was great and the staff was kind", "bad", "the room was clean"]
    judge = GoldJudge(task)
    cached = ScoredJudge(judge, [(prompt, t, True) for t in texts])
    for a in texts:
        for b in texts:
            assert cached.prefer(prompt, a, b) == judge.prefer(prompt, a, b)


def test_build_judge_wraps_scoring_functions(tmp_path, monkeypatch):
    (tmp_path / "length_judge_module.py").write_text(
        "def score(items):\n    return [len(r) for _, r, _ in items]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = EvalConfig.model_validate({"models": [{"name": "m", "path": "x"}],
                                     "judge": {"kind": "callable", "callable": "length_judge_module:score"}})
    judge = build_judge(cfg.judge, None, None, None, 8, torch.device("cpu"), torch.float32)
    assert judge.prefer("p", "longer", "short") == 1.0 and judge.prefer("p", "ab", "cd") == 0.5


def test_config_validation_names_the_problem():
    with pytest.raises(ConfigError, match="baseline 'z' is not one of the models"):
        validate_config(EvalConfig, {"models": [{"name": "m", "path": "x"}], "baseline": "z"}, "cfg.yaml")
    with pytest.raises(ConfigError, match="judge.kind=gold needs prompts from a built-in task"):
        validate_config(EvalConfig, {"models": [{"name": "m", "path": "x"}], "prompts": {"path": "p.jsonl"}}, "c")
    with pytest.raises(ConfigError, match="needs reward_model"):
        validate_config(EvalConfig, {"models": [{"name": "m", "path": "x", "best_of_n": 4}]}, "c")
    assert EvalConfig.model_validate({"models": [{"name": "m", "path": "x"}], "prompts": {"n": 3}}).prompts.split == "test"
    with pytest.raises(ConfigError, match="repeat a label"):
        validate_config(EvalConfig, {"models": [{"name": "m", "path": "x"}],
                                     "decodings": [{"temperature": 1.0}, {"temperature": 1}]}, "c")
    bon = {"name": "bon", "path": "x", "best_of_n": 4, "bon_scorer": "gold"}
    with pytest.raises(ConfigError, match="best_of_n needs a sampled decoding"):
        validate_config(EvalConfig, {"models": [{"name": "m", "path": "x"}, bon], "decodings": [{"greedy": True}]}, "c")
    with pytest.raises(ConfigError, match="baseline 'bon' is a best-of-n sampler"):
        validate_config(EvalConfig, {"models": [bon, {"name": "m", "path": "x"}],
                                     "decodings": [{"greedy": True}, {"temperature": 1.0}]}, "c")


def test_report_renders_the_eval_run(evaluated, tmp_path):
    from rlhfkit.eval.report import write_report

    html = write_report(tmp_path / "report.html", {"eval": evaluated[1]}).read_text(encoding="utf-8")
    assert "could not be rendered" not in html
    assert "0.636 (analytic)" in html and "Held-out SFT perplexity" in html
    assert html.count("<img ") == 1  # the win-rate plot


def _dtypes(module) -> set:
    return {p.dtype for p in module.parameters()}


def test_precision_fp32_loads_bf16_checkpoints_in_fp32(bf16_dirs, tmp_path):
    cfg = _config(tmp_path, [{"name": "a", "path": bf16_dirs["lm"]}], reward_model=bf16_dirs["rm"],
                  decodings=[{"temperature": 1.0}], perplexity={"n": 0})
    assert cfg.run.precision == "fp32"
    ctx = _context(cfg)
    # The reference is loaded like every evaluated model (`_load_model`).
    assert _dtypes(ctx.reference) == {torch.float32} and _dtypes(ctx.rm) == {torch.float32}
    bf16 = _context(cfg.model_copy(update={"run": cfg.run.model_copy(update={"precision": "bf16"})}))
    # The RM's linear head is built in fp32 and loaded by copy, so only its trunk is bf16.
    assert _dtypes(bf16.reference) == {torch.bfloat16} and torch.bfloat16 in _dtypes(bf16.rm)


def test_separate_judge_reward_model_gets_the_device_and_dtype(bf16_dirs):
    cfg = EvalConfig.model_validate({"models": [{"name": "m", "path": "x"}], "reward_model": "other_rm",
                                     "judge": {"kind": "reward_model", "reward_model": bf16_dirs["rm"]}})
    # The meta device stands in for CUDA on a CPU-only machine: a model left on the CPU would show it.
    judge = build_judge(cfg.judge, None, None, cfg.reward_model, 8, torch.device("meta"), torch.float32)
    assert {p.device.type for p in judge.rm.parameters()} == {"meta"}
    assert _dtypes(judge.rm) == {torch.float32}


def test_reward_model_scores_batch_size_responses_per_forward(model_dirs, bf16_dirs, tmp_path, monkeypatch):
    from rlhfkit.models.reward import RewardModel

    rows = []
    forward = RewardModel.forward

    def counting_forward(self, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(RewardModel, "forward", counting_forward)
    models = [{"name": "a", "path": model_dirs["a"]}, {"name": "bon", "path": model_dirs["a"], "best_of_n": 2}]
    evaluate_models(_config(tmp_path, models, reward_model=bf16_dirs["rm"], decodings=[{"temperature": 1.0}],
                            perplexity={"n": 0}, batch_size=3))
    # Best-of-2 ranks 2 × 8 samples, then the RM scores each model's 8 responses (judge: gold, no RM).
    assert rows == [3, 3, 3, 3, 3, 1] + [3, 3, 2] * 2


class RecordingProgress:
    """Stands in for `rlhfkit.rundir.Progress`: wraps a real (enabled) bar and records its total,
    the sum of its advances and the labels it showed."""

    bars: list = []

    def __init__(self, total, description, enabled, completed=0):
        self.bar = Progress(total, description, enabled, completed)
        self.total, self.done, self.enabled, self.labels = total, completed, enabled, []
        RecordingProgress.bars.append(self)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def update(self, advance=1, **info):
        self.bar.update(advance, **info)
        self.done += advance
        self.labels.append(info)

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)


def test_progress_bar_reaches_its_total(model_dirs, tmp_path, monkeypatch):
    monkeypatch.setattr("rlhfkit.rundir.Progress", RecordingProgress)
    monkeypatch.setattr(RecordingProgress, "bars", [])
    models = [{"name": "a", "path": model_dirs["a"]}, {"name": "b", "path": model_dirs["b"]},
              {"name": "bon", "path": model_dirs["a"], "best_of_n": 2, "bon_scorer": "gold"}]
    cfg = _config(tmp_path, models, perplexity={"n": 4})
    evaluate_models(cfg.model_copy(update={"run": cfg.run.model_copy(update={"progress": True})}))
    (bar,) = RecordingProgress.bars
    # Counted by hand, 8 prompts. Generated: a, b 8 greedy + 8 sampled each, bon 2 × 8 sampled = 48.
    # Perplexity: 4 demonstrations for a and b = 8 (best-of-n has none). Greedy: 2 models scored +
    # b judged against a = 24. T=1: 3 scored + 2 judged + 3 Bradley–Terry pairs = 64.
    assert bar.enabled and bar.total == 48 + 8 + 24 + 64
    assert bar.done == bar.total
    shown = {(label.get("stage"), label.get("model"), label.get("decoding")) for label in bar.labels}
    assert {("generate", "bon", "T=1"), ("perplexity", "b", None), ("judge", "b", "greedy")} <= shown
    assert ("generate", "bon", "greedy") not in shown  # best-of-n has no greedy responses


def test_best_of_n_study_progress_reaches_its_total(model_dirs, tmp_path, monkeypatch):
    from rlhfkit.eval.bon import best_of_n_study
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward import RewardModel

    rm_dir = tmp_path / "rm"
    RewardModel.from_causal_lm(load_causal_lm(model_dirs["b"]), load_tokenizer(model_dirs["b"])).save(rm_dir)
    monkeypatch.setattr("rlhfkit.rundir.Progress", RecordingProgress)
    monkeypatch.setattr(RecordingProgress, "bars", [])
    best_of_n_study(model_dirs["a"], rm_dir, n_prompts=3, n_max=4, max_new_tokens=4)
    (bar,) = RecordingProgress.bars
    assert bar.enabled and bar.total == 3 * 4 and bar.done == bar.total
