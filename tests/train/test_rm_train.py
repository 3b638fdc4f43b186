"""Reward-model training: config errors, batching, the grouped loss, accumulation invariance,
evaluation figures, data conversion, exact resume and the built-in task end to end."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config.base import ConfigError, load_config
from rlhfkit.config.common import RunConfig, TinyModelConfig
from rlhfkit.config.rm import RMConfig, RMModelConfig
from rlhfkit.data import PreferencePair, Ranking, Rating, SkipReport, write_records
from rlhfkit.models.reward import RMInput, build_reward_model, load_reward_model
from rlhfkit.tasks import SimulatedAnnotator, get_task
from rlhfkit.train import rm as R
from rlhfkit.train import rm_data as D
from rlhfkit.train.common import BatchPlan, make_accelerator

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, vocab_size=200, tokenizer_lines=300,
                       max_positions=128)



@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, task):
    """A saved tiny RM: training runs start from it (no tokenizer training per run)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("rm") / "init"
    build_reward_model(RMModelConfig(tiny=TINY), task.corpus, 0).save(path)
    return str(path)


@pytest.fixture(scope="module")
def rm(rm_dir):
    return load_reward_model(rm_dir)


def ranking_file(path, task, split, n, k, seed=0):
    annotator = SimulatedAnnotator(task, seed=seed)
    records = []
    for p in task.prompts(split, n):
        texts = list(dict.fromkeys(task.sample_demos(p.prompt, k, seed=seed)))
        records.append(Ranking(prompt=p.prompt, responses=texts, ranks=annotator.rank(p.prompt, texts),
                               meta={"gold": task.gold_rewards([p.prompt] * len(texts), texts)}))
    write_records(path, records)
    return str(path)


def overrides(tmp_path, rm_dir, **extra):
    base = {"model.path": rm_dir or "null", "run.out_dir": str(tmp_path / "run"), "run.progress": False,
            "run.num_threads": 1, "normalize.n_samples": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, message", [
    ("micro_batch_size=32", "micro_batch_size 32 exceeds batch_size 16"),
    ("loss.type=hinge", "'bt' or 'pl'"),
    ("data.k=12", "less than or equal to 9"),
    ("normalize.source=policy", "needs normalize.policy_path"),
    ("eval.early_stopping.metric=eval/auc", "'eval/loss' or 'eval/accuracy'"),
    ("model.input_format=xml", "'auto', 'chat', 'plain' or 'pair'"),
    ("lr=1e-3", "unknown field"),
])
def test_bad_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RMConfig, None, [override])


def test_margin_with_pl_is_rejected():
    with pytest.raises(ConfigError, match="Bradley–Terry loss only"):
        load_config(RMConfig, None, ["loss.type=pl", "loss.margin=true"])


# ---------------------------------------------------------------------------------------- batches
def test_length_grouped_batches_cover_each_epoch_sorted_in_windows():
    lengths = [(i * 37) % 101 for i in range(103)]
    batches = R.LengthGroupedBatches(lengths, batch_size=5, seed=3, window=4)
    again = R.LengthGroupedBatches(lengths, batch_size=5, seed=3, window=4)
    epoch0 = [batches(s) for s in range(20)]
    assert [again(s) for s in (19, 0, 7)] == [epoch0[19], epoch0[0], epoch0[7]]  # pure in (seed, step)
    flat = [i for b in epoch0 for i in b]
    assert len(flat) == 100 == len(set(flat))  # one epoch = 20 full batches, nothing twice
    assert all(len(b) == 5 and [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
               for b in epoch0)
    # Length grouping leaves less padding than the plain shuffled order.
    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)
    shuffled = [R.global_batch_indices(103, 5, 3, s) for s in range(20)]
    assert padding(epoch0) < 0.5 * padding(shuffled)
    assert [batches(20 + s) for s in range(20)] != epoch0  # the next epoch is reshuffled


def fake_group(ranks, lengths, margins=None, gold=None, bucket=None):
    inputs = tuple(RMInput(list(range(2, 2 + n))) for n in lengths)
    texts = tuple(f"r{i}" for i in range(len(ranks)))
    return D.Group("p", texts, (True,) * len(ranks), inputs, tuple(ranks), margins, bucket, gold)


def test_group_batch_layout_by_hand(rm):
    groups = [fake_group((2, 1), (3, 5)), fake_group((1, 3, 2), (4, 2, 6))]
    batch, layout = R.group_batch(groups, rm)
    assert batch["input_ids"].shape == (5, 6)
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 4, 2, 6]
    assert layout["index"].tolist() == [[0, 1, 0], [2, 3, 4]]
    assert layout["response_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert layout["ranks"][0, :2].tolist() == [2, 1] and layout["ranks"][1].tolist() == [1, 3, 2]
    assert layout["margins"] is None


def test_group_loss_by_hand():
    # Group 1 (K=3, ranks 1,2,3, rewards 1,0,−1): pairs with gaps 1, 2, 1 → mean of softplus(−gap).
    # Group 2 (K=2, response 1 better, rewards 0.5, 0.25): gap −0.25... i.e. softplus(0.25).
    rewards = torch.tensor([[1.0], [0.0], [-1.0], [0.5], [0.25]])
    groups = [fake_group((1, 2, 3), (1, 1, 1)), fake_group((2, 1), (1, 1))]
    layout = {"index": torch.tensor([[0, 1, 2], [3, 4, 0]]), "ranks": torch.tensor([[1, 2, 3], [2, 1, 4]]),
              "response_mask": torch.tensor([[True, True, True], [True, True, False]]), "margins": None}
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 softplus
    g1 = (sp(-1) + sp(-2) + sp(-1)) / 3
    g2 = sp(0.25)
    assert R.group_loss(rewards, layout, "bt", 0.0).item() == pytest.approx((g1 + g2) / 2, rel=1e-6)
    # Plackett–Luce of group 1: −[1 − log(e¹+e⁰+e⁻¹)] − [0 − log(e⁰+e⁻¹)]; group 2 is BT.
    pl1 = -(1 - math.log(math.e + 1 + 1 / math.e)) - (0 - math.log(1 + 1 / math.e))
    assert R.group_loss(rewards, layout, "pl", 0.0).item() == pytest.approx((pl1 + g2) / 2, rel=1e-6)
    # Centering adds η·mean((r_better + r_worse)²) over all 4 strict pairs: sums 1, 0, −1, 0.75.
    centering = 0.01 * (1 + 0 + 1 + 0.75**2) / 4
    assert R.group_loss(rewards, layout, "bt", 0.01).item() == pytest.approx((g1 + g2) / 2 + centering, rel=1e-6)
    # A margin of 0.5 on group 2 raises its term to softplus(0.25 + 0.5).
    layout["margins"] = torch.tensor([[[0.0] * 3] * 3, [[0.0, 0.5, 0], [0.5, 0.0, 0], [0, 0, 0]]])
    assert R.group_loss(rewards, layout, "bt", 0.0).item() == pytest.approx((g1 + sp(0.75)) / 2, rel=1e-6)
    assert len(groups[0].pairs()) == 3 and groups[1].pairs() == [(1, 0)]


def _one_sgd_step(rm_dir, groups, micro):
    torch.manual_seed(0)
    model = load_reward_model(rm_dir)
    cfg = load_config(RMConfig, None, [f"micro_batch_size={micro}", "batch_size=8", "optim.max_grad_norm=null"])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    accelerator = make_accelerator(RunConfig())
    stats = R.rm_step(model, optimizer, scheduler, accelerator, groups, list(range(8)),
                      BatchPlan.make(8, micro, 1), cfg, model)
    return model, stats


def test_gradient_accumulation_1x8_equals_8x1(tmp_path, task, rm_dir, rm):
    path = ranking_file(tmp_path / "r.jsonl", task, "train", 8, 4)
    groups = D.read_groups(path, "ranking", rm, "raise", 1.0, SkipReport())
    whole, stats_whole = _one_sgd_step(rm_dir, groups, 8)
    split, stats_split = _one_sgd_step(rm_dir, groups, 1)
    assert stats_whole["loss"] == pytest.approx(stats_split["loss"], rel=1e-5)
    assert stats_whole["pairs"] == stats_split["pairs"] == sum(len(g.pairs()) for g in groups)
    init = load_reward_model(rm_dir).state_dict()
    moved = 0.0
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, rtol=1e-4, atol=1e-6)
        moved = max(moved, (value - init[name]).abs().max().item())
    assert moved > 1e-3  # the step did change the weights


# ---------------------------------------------------------------------------------------- data
def test_pairs_ratings_and_ties_become_groups(tmp_path, rm):
    pairs = [PreferencePair(prompt="a", chosen="x y", rejected="y", strength=3),
             PreferencePair(prompt="b", chosen="x", rejected="y y", margin=0.5),
             PreferencePair(prompt="c", chosen="x", rejected="y", tie=True)]
    write_records(tmp_path / "p.jsonl", pairs)
    skips = SkipReport()
    groups = D.read_groups(str(tmp_path / "p.jsonl"), "pair", rm, "raise", 2.0, skips)
    assert len(groups) == 2 and skips.counts["no_strict_preference"] == 1
    assert groups[0].margins == ((0.0, 2.0), (2.0, 0.0))  # strength 3 → margin 1 (Llama 2 small), × 2
    assert groups[1].margins == ((0.0, 1.0), (1.0, 0.0))
    assert (groups[0].bucket, groups[1].bucket) == ("strength=3", "margin=0.5")
    ratings = [Rating(prompt="q", response="u", rating=4), Rating(prompt="q", response="v", rating=2),
               Rating(prompt="q", response="u", rating=2), Rating(prompt="q", response="w", rating=3),
               Rating(prompt="lonely", response="u", rating=5)]
    write_records(tmp_path / "r.jsonl", ratings)
    (group,) = D.read_groups(str(tmp_path / "r.jsonl"), "rating", rm, "raise", 1.0, SkipReport())
    # Mean ratings u = 3, v = 2, w = 3 → ranks 1, 3, 1 (u and w tie); margins are rating gaps.
    assert group.texts == ("u", "v", "w") and group.ranks == (1, 3, 1)
    assert group.margins[0][1] == 1.0 and group.margins[2][1] == 1.0 and group.pairs() == [(0, 1), (2, 1)]
    # loss.margin: false (scale None): the same records give no margins at all.
    assert all(g.margins is None for g in D.read_groups(str(tmp_path / "p.jsonl"), "pair", rm, "raise", None,
                                                        SkipReport()))
    assert D.read_groups(str(tmp_path / "r.jsonl"), "rating", rm, "raise", None, SkipReport())[0].margins is None


def test_margins_reach_the_loss_only_with_loss_margin(tmp_path, rm, monkeypatch):
    write_records(tmp_path / "p.jsonl", [PreferencePair(prompt=f"p{i}", chosen="x y", rejected="y", strength=3)
                                         for i in range(4)])
    seen = {}
    real = D.read_groups

    def recording(path, kind, model, on_error, margin_scale, skips):
        seen[margin_scale] = real(path, kind, model, on_error, margin_scale, skips)
        return seen[margin_scale]

    monkeypatch.setattr(D, "read_groups", recording)
    for flag in ("false", "true"):
        cfg = load_config(RMConfig, None, [f"data.train_path={tmp_path / 'p.jsonl'}", "data.kind=pair",
                                           f"loss.margin={flag}", "loss.margin_scale=2.0"])
        D.load_rm_data(cfg, rm, None, True, SkipReport(), lambda: None)
    assert all(g.margins is None for g in seen[None])
    assert all(g.margins == ((0.0, 2.0), (2.0, 0.0)) for g in seen[2.0])


def test_evaluation_figures_match_an_independent_computation(tmp_path, task, rm):
    path = ranking_file(tmp_path / "e.jsonl", task, "eval", 12, 3)
    groups = D.read_groups(path, "ranking", rm, "raise", 1.0, SkipReport())
    cfg = load_config(RMConfig, None, ["eval.batch_size=7", "eval.n_bins=4"])
    out = R.evaluate_rm(rm, groups, cfg, contextlib.nullcontext, tau=0.85)
    diffs, gold_a, gold_b = [], [], []
    for g in groups:
        s = rm.score_texts([g.prompt] * len(g.texts), list(g.texts), normalized=False)[:, 0]
        for i in range(len(g.texts)):
            for j in range(len(g.texts)):
                if g.ranks[i] < g.ranks[j]:
                    diffs.append(float(s[i] - s[j]))
                    gold_a.append(g.gold[i])
                    gold_b.append(g.gold[j])
    assert out["eval/pairs"] == len(diffs)
    assert out["eval/accuracy"] == pytest.approx(sum(d > 0 for d in diffs) / len(diffs), abs=1e-9)
    loss = sum(math.log1p(math.exp(-d)) for d in diffs) / len(diffs)
    assert out["eval/loss"] == pytest.approx(loss, rel=1e-4)
    ceiling = sum(1 / (1 + math.exp(-abs(a - b) / 0.85)) for a, b in zip(gold_a, gold_b)) / len(diffs)
    assert out["eval/bayes_ceiling"] == pytest.approx(ceiling, rel=1e-9)
    # ECE over both orientations, 4 equal-width bins.
    points = [(1 / (1 + math.exp(-d)), 1.0) for d in diffs] + [(1 / (1 + math.exp(d)), 0.0) for d in diffs]
    ece = 0.0
    for k in range(4):
        members = [(p, y) for p, y in points if k / 4 <= p < (k + 1) / 4 or (k == 3 and p == 1.0)]
        if members:
            ece += len(members) / len(points) * abs(sum(y for _, y in members) / len(members)
                                                   - sum(p for p, _ in members) / len(members))
    assert out["eval/ece"] == pytest.approx(ece, rel=1e-4, abs=1e-9)
    assert sum(row["count"] for row in out["reliability_table"]) == 2 * len(diffs)
    assert sum(b["pairs"] for b in out["accuracy_by_bucket"].values()) == len(diffs)


# ---------------------------------------------------------------------------------------- end to end
def _weights(run_dir):
    return {**load_file(str(run_dir / "model" / "model.safetensors")),
            **load_file(str(run_dir / "model" / "reward_head.safetensors"))}


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, task, rm_dir):
    data = ranking_file(tmp_path / "train.jsonl", task, "train", 48, 3)
    common = dict(**{"data.train_path": data, "data.kind": "ranking", "batch_size": 8, "micro_batch_size": 4,
                     "max_steps": 6, "run.eval_every": 2, "run.save_every": 2, "optim.lr": 3e-3,
                     "eval.early_stopping.keep_best": False})
    full = R.train_rm(load_config(RMConfig, None, overrides(tmp_path / "a", rm_dir, **common)))
    stopped = R.train_rm(load_config(RMConfig, None, overrides(tmp_path / "b", rm_dir, **common,
                                                               **{"run.stop_after_steps": 3})))
    assert stopped == {"stopped_at_step": 3}
    resumed = R.train_rm(load_config(RMConfig, None, overrides(tmp_path / "b", rm_dir, **common)))
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["eval_accuracy"] == full["eval_accuracy"] and resumed["norm_gain"] == full["norm_gain"]
    rows = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]  # nothing logged twice after the resume
    assert full["padding_fraction"] < 0.5 and full["pairs_per_s"] > 0 and full["tokens_per_s"] > 0


def test_task_rm_learns_towards_the_bayes_ceiling(tmp_path):
    # A from-scratch 2-layer RM on 1,000 prompts × C(4,2) annotator pairs (4 epochs: an untrained
    # trunk needs them). Such tiny trunks plateau at 0.56–0.61 accuracy (0.60–0.65 against the
    # gold order) whatever the data size, width, depth or lr tried (docs/reward-model.md); this
    # run gives 0.575 / 0.62, and the bounds sit ~2–3 standard errors (1,200 pairs) below that.
    cfg = load_config(RMConfig, None, overrides(tmp_path, "", **{
        "model.tiny.hidden_size": 64, "model.tiny.num_layers": 2, "model.tiny.num_heads": 2,
        "model.tiny.vocab_size": 512, "model.tiny.tokenizer_lines": 600,
        "data.n_train": 1000, "data.n_eval": 200, "data.k": 4, "batch_size": 32, "micro_batch_size": 32,
        "epochs": 4, "optim.lr": 3e-3, "run.eval_every": 1000}))
    summary = R.train_rm(cfg)
    assert summary["bayes_ceiling"] == pytest.approx(0.75, abs=0.03)  # the task's default annotator τ
    assert summary["eval_pairs"] > 1100
    assert summary["eval_accuracy"] > 0.55 and summary["gold_accuracy"] > 0.58
    assert summary["eval_accuracy"] >= 0.7 * summary["bayes_ceiling"]
    assert set(summary) >= {"eval_loss", "ece", "accuracy_by_bucket", "norm_gain", "norm_bias", "pairs_per_s",
                            "tokens_per_s", "padding_fraction"}
    # The saved model is normalised on the task's SFT demonstrations: mean 0, std 1 there.
    model = load_reward_model(tmp_path / "run" / "model")
    demos = get_task("reviews", 0).sft_examples(16)
    scores = model.score_texts([d.prompt for d in demos], [d.response for d in demos])[:, 0].double()
    assert abs(scores.mean().item()) < 1e-5 and abs(scores.std(correction=0).item() - 1) < 1e-5


def test_improvement_tracking_by_hand():
    cfg = load_config(RMConfig, None, ["eval.early_stopping.metric=eval/accuracy",
                                       "eval.early_stopping.min_delta=0.01"])
    state = {"best": None, "bad_evals": 0}
    seen = [R._improved(state, v, cfg) for v in (0.60, 0.605, 0.62, 0.50, 0.631)]
    assert seen == [True, False, True, False, True] and state == {"best": 0.631, "bad_evals": 0}
    cfg = load_config(RMConfig, None, [])  # eval/loss: lower is better
    state = {"best": None, "bad_evals": 0}
    assert [R._improved(state, v, cfg) for v in (0.7, 0.71, 0.69)] == [True, False, True]


def test_early_stopping_keeps_the_best_weights(tmp_path, task, rm_dir):
    data = ranking_file(tmp_path / "train.jsonl", task, "train", 40, 3)
    # min_delta = 10 nats: only the first evaluation counts as an improvement, so with patience 1
    # the run stops after the second step and finishes with the weights of step 1.
    cfg = load_config(RMConfig, None, overrides(tmp_path, rm_dir, **{
        "data.train_path": data, "data.kind": "ranking", "batch_size": 8, "micro_batch_size": 8,
        "max_steps": 5, "run.eval_every": 1, "optim.lr": 1e-2, "optim.warmup_ratio": 0,
        "eval.early_stopping.enabled": True, "eval.early_stopping.patience": 1,
        "eval.early_stopping.min_delta": 10.0, "normalize.source": "none"}))
    summary = R.train_rm(cfg)
    assert (summary["steps"], summary["best_step"], summary["stopped_early"]) == (2, 1, True)
    final, best = _weights(tmp_path / "run"), {**load_file(str(tmp_path / "run" / "best" / "model.safetensors")),
                                               **load_file(str(tmp_path / "run" / "best" / "reward_head.safetensors"))}
    assert all(torch.equal(final[k], best[k]) for k in final)
    last = torch.load(sorted((tmp_path / "run" / "checkpoints").iterdir())[-1] / "pytorch_model.bin")
    assert not torch.equal(last["head.weight"], final["weight"])  # step 2 had moved on


@pytest.mark.slow
def test_plackett_luce_on_rankings_beats_one_pair_per_prompt(tmp_path):
    """K = 4 rankings carry C(4,2) = 6 comparisons per prompt; reducing them to one random pair
    per prompt (same prompts, same responses) should give a clearly worse RM. Few prompts, so
    that data rather than the tiny from-scratch trunk limits accuracy (at 2,000 prompts both
    reach the trunk's plateau, ≈ 0.565)."""
    import random

    task = get_task("reviews", seed=0)
    train = ranking_file(tmp_path / "train.jsonl", task, "train", 400, 4)
    held = ranking_file(tmp_path / "eval.jsonl", task, "eval", 200, 4)
    from rlhfkit.data import read_records

    rng = random.Random(0)
    pairs = []
    for rec in read_records(train, kind="ranking")[0]:
        i, j = rng.sample(range(len(rec.responses)), 2)
        if rec.ranks[i] != rec.ranks[j]:
            better, worse = (i, j) if rec.ranks[i] < rec.ranks[j] else (j, i)
            pairs.append(Ranking(prompt=rec.prompt, responses=[rec.responses[better], rec.responses[worse]],
                                 ranks=[1, 2]))
    write_records(tmp_path / "pairs.jsonl", pairs)
    accuracy = {}
    for name, path, loss in (("pl", train, "pl"), ("pair", str(tmp_path / "pairs.jsonl"), "bt")):
        cfg = load_config(RMConfig, None, overrides(tmp_path / name, "", **{
            "model.tiny.hidden_size": 64, "model.tiny.num_layers": 2, "model.tiny.num_heads": 2,
            "model.tiny.vocab_size": 512, "model.tiny.tokenizer_lines": 600, "data.train_path": path,
            "data.eval_path": held, "data.kind": "ranking", "loss.type": loss, "batch_size": 32,
            "micro_batch_size": 32, "epochs": 4, "optim.lr": 3e-3, "run.eval_every": 1000,
            "normalize.source": "none"}))
        accuracy[name] = R.train_rm(cfg)["eval_accuracy"]
    assert accuracy["pl"] > accuracy["pair"] + 0.02, accuracy
