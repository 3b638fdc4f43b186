"""Best-of-n curve and over-optimisation study: analytic KL table, the unbiased estimator against
brute force over subsets, and Gao's fits recovered from synthetic curves."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from rlhfkit.eval.bon import BonPoint, best_of_n_curve, best_of_n_study, bon_ns
from rlhfkit.eval.overopt import OverOptPoint, overoptimisation_study, points_from_eval, points_from_metrics


def test_bon_kl_table():
    # rlhf-details §2.1: KL_bon = log n − (n−1)/n → 0.64, 1.83, 3.17 nats for n = 4, 16, 64.
    curve = best_of_n_curve(np.zeros((1, 64)), np.zeros((1, 64)), [1, 4, 16, 64])
    assert [p.kl for p in curve] == pytest.approx([0.0, 0.63629, 1.83509, 3.17451], abs=1e-5)
    # The reference table's two-decimal values (1.835 printed as 1.83).
    assert [p.kl for p in curve[1:]] == pytest.approx([0.64, 1.83, 3.17], abs=6e-3)
    assert curve[2].d == pytest.approx(math.sqrt(math.log(16) - 15 / 16), rel=1e-12)


def test_bon_ns():
    assert bon_ns(8) == [1, 2, 4, 8]
    assert bon_ns(6) == [1, 2, 4, 6]
    assert bon_ns(1) == [1]


def test_best_of_n_curve_matches_brute_force_over_subsets():
    rng = np.random.default_rng(3)
    proxy, gold = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    curve = best_of_n_curve(proxy, gold)
    assert [p.n for p in curve] == [1, 2, 4, 5]
    for point in curve:
        best_gold, best_proxy = [], []
        for row in range(3):
            subsets = list(itertools.combinations(range(5), point.n))
            picks = [max(s, key=lambda i: proxy[row, i]) for s in subsets]
            best_gold.append(np.mean([gold[row, i] for i in picks]))
            best_proxy.append(np.mean([proxy[row, i] for i in picks]))
        assert point.gold == pytest.approx(np.mean(best_gold), rel=1e-12)
        assert point.proxy == pytest.approx(np.mean(best_proxy), rel=1e-12)


def _rl_points(alpha=0.9, beta=0.5, gold0=0.25, proxy0=-0.1):
    d = np.linspace(0.0, 4.0, 21)
    gold = gold0 + np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1))), 0.0)
    return [OverOptPoint(float(x * x), proxy0 + 0.8 * float(x), float(g), f"step {i}")
            for i, (x, g) in enumerate(zip(d, gold))]


def test_study_recovers_gao_rl_form_after_centring():
    study = overoptimisation_study(rl=_rl_points())
    rl = study["rl"]
    assert study["bon"] is None
    assert rl["init"] == pytest.approx({"proxy": -0.1, "gold": 0.25})
    assert (rl["fit"]["alpha"], rl["fit"]["beta"], rl["fit"]["r2"]) == pytest.approx((0.9, 0.5, 1.0), rel=1e-9)
    assert rl["fits"]["bon"]["r2"] < 1.0
    # Peak of d(α − β log d) at d* = e^(α/β − 1) = e^0.8.
    assert rl["fit"]["peak_d"] == pytest.approx(math.exp(0.8), rel=1e-9)
    assert rl["gold_peak"]["is_interior"] and rl["proxy_trend"] == pytest.approx(1.0)
    assert rl["points"][0]["gold"] == 0.0 and rl["points"][0]["proxy"] == 0.0
    assert len(rl["curve"]["d"]) == len(rl["curve"]["gold_fit"])


def test_study_recovers_gao_bon_form_from_bon_points():
    points = []
    for n in [1, 2, 4, 8, 16, 32, 64, 128]:
        kl = math.log(n) - (n - 1) / n
        d = math.sqrt(kl)
        points.append(BonPoint(n, kl, 1.0 + 0.7 * d, 0.5 + d * (1.2 - 0.3 * d)))
    bon = overoptimisation_study(bon=points)["bon"]
    assert (bon["fit"]["alpha"], bon["fit"]["beta"], bon["fit"]["r2"]) == pytest.approx((1.2, 0.3, 1.0), rel=1e-9)
    assert bon["fit"]["form"] == "bon" and bon["points"][-1]["label"] == "bon n=128"
    # Peak of d(α − βd): d* = α/2β = 2, R* = α²/4β = 1.2.
    assert (bon["fit"]["peak_d"], bon["fit"]["peak_reward"]) == pytest.approx((2.0, 1.2), rel=1e-9)


def test_explicit_init_overrides_smallest_kl_point():
    points = _rl_points(gold0=0.0, proxy0=0.0)[1:]  # no KL-0 point
    rl = overoptimisation_study(rl=points, rl_init=(0.0, 0.0))["rl"]
    assert (rl["fit"]["alpha"], rl["fit"]["beta"]) == pytest.approx((0.9, 0.5), rel=1e-9)


def test_study_reads_ppo_metrics_and_writes_json(tmp_path):
    rows = [{"step": 1, "loss/policy": 0.1}]
    rows += [{"step": p.label.split()[1], "kl/ref": p.kl, "reward/rm": p.proxy, "reward/gold": p.gold}
             for p in _rl_points()]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(points_from_metrics(tmp_path)) == 21
    out = tmp_path / "study" / "overopt.json"
    study = overoptimisation_study(rl=tmp_path, out_path=out)
    assert json.loads(out.read_text())["rl"]["fit"]["r2"] == pytest.approx(1.0, rel=1e-9)
    assert study["rl"]["points"][3]["label"] == "step 3"


def test_points_from_eval_summary():
    summary = {"decodings": {"T=1": {"models": {
        "sft": {"kl": 0.0, "rm": [0.1, 0.3], "gold": 1.0},
        "ppo": {"kl": 2.0, "rm": [0.9, 0.7], "gold": 1.5}}}}}
    points = points_from_eval(summary, head=1)
    assert points == [OverOptPoint(0.0, 0.3, 1.0, "sft"), OverOptPoint(2.0, 0.7, 1.5, "ppo")]
    with pytest.raises(ValueError, match="lack kl, rm or gold"):
        points_from_eval({"decodings": {"T=1": {"models": {"x": {"gold": 1.0}}}}})


def test_best_of_n_study_on_tiny_models(tmp_path):
    from rlhfkit.config.common import TinyModelConfig
    from rlhfkit.models.loading import save_hf
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.models.tiny import build_tiny_causal_lm
    from rlhfkit.tasks import get_task

    corpus = get_task("reviews", seed=0).corpus(300)
    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, vocab_size=200, max_positions=96)
    lm, tokenizer = build_tiny_causal_lm(shape, corpus, 0)
    save_hf(lm, tokenizer, tmp_path / "sft")
    rm_lm, rm_tokenizer = build_tiny_causal_lm(shape, corpus, 1)
    RewardModel.from_causal_lm(rm_lm, rm_tokenizer, num_heads=2, max_length=96).save(tmp_path / "rm")
    out = tmp_path / "bon.json"
    result = best_of_n_study(tmp_path / "sft", tmp_path / "rm", n_prompts=3, n_max=4, max_new_tokens=6,
                             out_path=out)
    points = result["points"]
    assert [p["n"] for p in points] == [1, 2, 4] and result["n_samples"] == 4
    assert points[2]["kl"] == pytest.approx(math.log(4) - 0.75, rel=1e-12)
    # E[max proxy of n] cannot fall as n grows.
    assert points[0]["proxy"] <= points[1]["proxy"] <= points[2]["proxy"]
    assert json.loads(out.read_text()) == result
    assert overoptimisation_study(bon=out)["bon"]["points"][0]["kl"] == 0.0
