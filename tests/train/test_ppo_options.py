"""PPO options end to end on QUICK-sized runs, each asserting an observable effect: the periodic
reference refresh (and its exact resume), the reward-plateau stop, the watchdog's warnings, the
critic-free estimators with the KL in the loss or in the reward, the shared-trunk value head, and
several reward models combined."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import rlhfkit.train.ppo as P
import rlhfkit.train.ppo_update as U
from rlhfkit.rundir import read_metrics
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.ppo_checks import (ENTROPY_COLLAPSE_FRACTION, FIRST_RATIO_TOL, LENGTH_DRIFT_FACTOR,
                                      NEGATIVE_KL_NATS, RATIO_LIMIT, Watchdog)
from rlhfkit.train.run import latest_checkpoint
from tests.train.test_ppo_loop import QUICK, _cfg

NO_EVAL = "data.n_eval_prompts=0"


def _ckpt(run_dir, step):
    return run_dir / "checkpoints" / f"step-{step:08d}"


def _policy_state(checkpoint):
    return torch.load(checkpoint / "pytorch_model.bin", weights_only=True)


def _reference_state(checkpoint):
    """The reference's weights, registered for checkpointing as Accelerate's first custom object."""
    return torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=True)


def _lm(policy_state):
    return {k[len("lm."):]: v for k, v in policy_state.items() if k.startswith("lm.")}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def _differs(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ recorders
@pytest.fixture
def record(monkeypatch):
    """Wraps the loop's stages to record, per step: the advantage stage's inputs and outputs, and
    every micro-batch's KL loss term with the bare `kl_loss` value it was built from (so the
    coefficient the loss used is term / value, whatever carries it)."""
    log = {"step": 0, "adv": {}, "kl": []}
    update_stage, advantages_stage = P.update_stage, P.advantages_stage
    micro_losses, kl_loss = U.micro_losses, U.kl_loss
    last = {}

    def rec_advantages(ctx, batch, ref_logprobs, values, rewards):
        exp, metrics = advantages_stage(ctx, batch, ref_logprobs, values, rewards)
        log["adv"][ctx.state["step"] + 1] = {
            "scores": batch.scores.detach().clone(), "rewards": rewards.detach().clone(),
            "mask": batch.rollout.response_mask.clone(), "group_ids": batch.group_ids.clone(),
            "values": None if values is None else values.detach().clone(), "advantages": exp.advantages.clone()}
        return exp, metrics

    def rec_update(ctx, exp, step):
        log["step"] = step
        return update_stage(ctx, exp, step)

    def rec_kl_loss(*args, **kwargs):
        last["kl"] = out = kl_loss(*args, **kwargs)
        return out

    def rec_micro(*args, **kwargs):
        last.pop("kl", None)
        terms, stats = micro_losses(*args, **kwargs)
        if "kl" in terms:
            log["kl"].append((log["step"], float(terms["kl"].detach()), float(last["kl"].detach())))
        return terms, stats

    monkeypatch.setattr(P, "advantages_stage", rec_advantages)
    monkeypatch.setattr(P, "update_stage", rec_update)
    monkeypatch.setattr(U, "micro_losses", rec_micro)
    monkeypatch.setattr(U, "kl_loss", rec_kl_loss)
    return log


def _loss_coefs(log):
    """(step, β used in the loss) for every micro-batch whose KL value is measurably non-zero."""
    return [(step, term / value) for step, term, value in log["kl"] if abs(value) > 1e-6]


# ------------------------------------------------------------------------------------ 1. reference refresh
REFRESH = [*QUICK, NO_EVAL, "kl.ref_refresh_every=2", "run.keep_checkpoints=10"]


def test_reference_refresh_copies_the_policy_at_the_refresh_steps_only(sft_model, tmp_path):
    out = tmp_path / "refresh"
    train_ppo(_cfg(sft_model, out, *REFRESH))
    policy = {s: _lm(_policy_state(_ckpt(out, s))) for s in (1, 2, 3, 4)}
    ref = {s: _reference_state(_ckpt(out, s)) for s in (1, 2, 3, 4)}
    sft = load_file(str(sft_model / "model.safetensors"))
    # Before the first refresh the reference is the SFT model; at a refresh step it is exactly the
    # policy saved with it; one step later it is still that policy, which has moved on.
    _assert_same({k: sft[k] for k in ref[1]}, ref[1])
    assert _differs(ref[1], policy[1])
    _assert_same(policy[2], ref[2])
    _assert_same(policy[2], ref[3])
    assert _differs(policy[3], ref[3])
    _assert_same(policy[4], ref[4])
    # The rollout right after a refresh is sampled from the reference itself: KL ≈ 0 (fp32 generation
    # log-probs vs the full forward), while without a refresh the KL has grown by then.
    kl = {r["step"]: r["kl/ref"] for r in read_metrics(out)}
    assert abs(kl[3]) < 1e-4 and abs(kl[1]) < 1e-4
    assert kl[2] > 0.01 and kl[4] > 0.01, kl


def test_run_killed_after_a_refresh_resumes_to_the_uninterrupted_weights(sft_model, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train_ppo(_cfg(sft_model, full, *REFRESH))
    # Killed after step 3: the reference (refreshed at step 2) differs from both the SFT model and
    # the policy at the kill, so only a restored reference gives step 4 the same KL rewards.
    assert train_ppo(_cfg(sft_model, resumed, *REFRESH, "run.stop_after_steps=3")) == {"stopped_at_step": 3}
    train_ppo(_cfg(sft_model, resumed, *REFRESH))
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(resumed / "model" / "model.safetensors"))
    _assert_same(a, b)
    _assert_same(_reference_state(_ckpt(full, 4)), _reference_state(_ckpt(resumed, 4)))
    rows_full, rows_resumed = read_metrics(full), read_metrics(resumed)
    assert [r["step"] for r in rows_resumed] == [1, 2, 3, 4]
    for x, y in zip(rows_full, rows_resumed):
        assert (x["kl/ref"], x["reward/total"]) == (y["kl/ref"], y["reward/total"]), x["step"]


# ------------------------------------------------------------------------------------ 2. plateau stop
_CALLS = {"n": 0}


def constant_reward(prompts, responses, finished):
    _CALLS["n"] += 1
    return [0.5] * len(prompts)


def slowly_rising_reward(prompts, responses, finished):
    """0.004 more every call (one call per step when evaluation is off)."""
    _CALLS["n"] += 1
    return [0.004 * _CALLS["n"]] * len(prompts)


def _callable(name):
    return ["reward.source=callable", f"reward.callable={__name__}:{name}", "reward.missing_eos_penalty=null", NO_EVAL]


def test_constant_reward_stops_on_plateau_after_patience_with_a_checkpoint(sft_model, tmp_path, caplog):
    _CALLS["n"] = 0
    out = tmp_path / "plateau"
    with caplog.at_level(logging.WARNING, logger="rlhfkit.ppo"):
        summary = train_ppo(_cfg(sft_model, out, *QUICK, *_callable("constant_reward"), "max_steps=10",
                                 "run.save_every=100", "stop.plateau_patience=2", "stop.plateau_min_delta=0.01"))
    # Step 1 sets the best score; steps 2 and 3 do not beat it: 3 − 1 ≥ patience 2.
    assert summary["stop_reason"] == "plateau" and summary["steps"] == 3, summary
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3] and _CALLS["n"] == 3
    assert all(r["reward/score"] == 0.5 for r in read_metrics(out))
    last = latest_checkpoint(out)
    assert last is not None and last.name == "step-00000003"  # saved at the stop (save_every is 100)
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["best_step"] == 1
    assert (out / "model" / "model.safetensors").exists()  # a normal end: the final model is written
    assert any("stopping at step 3" in r.getMessage() for r in caplog.records)


def test_improvements_smaller_than_min_delta_do_not_reset_the_patience(sft_model, tmp_path):
    # +0.004 per step with min_delta 0.01: the best moves at steps 1, 4, 7, …, so 2 steps of
    # patience run out at step 3, while 3 never do.
    for patience, steps, reason in ((2, 3, "plateau"), (3, 6, "max_steps")):
        _CALLS["n"] = 0
        out = tmp_path / f"patience-{patience}"
        summary = train_ppo(_cfg(sft_model, out, *QUICK, *_callable("slowly_rising_reward"), "max_steps=6",
                                 "ppo_epochs=1", f"stop.plateau_patience={patience}", "stop.plateau_min_delta=0.01"))
        assert (summary["stop_reason"], summary["steps"]) == (reason, steps), (patience, summary)
        if reason == "max_steps":
            state = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())
            assert state["best_step"] == 4


# ------------------------------------------------------------------------------------ 3. watchdog
_MESSAGES = {"KL to the reference is negative": "kl_negative", "PPO ratio max": "ratio",
             "entropy collapsed": "entropy", "mean response length drifted": "length",
             "first-minibatch ratio deviates": "first_ratio"}


def _conditions(m, base):
    """The watchdog's documented conditions (docs/ppo.md, Checks built in), recomputed from a row."""
    h0, n0 = base.get("policy/entropy"), base.get("response/length")
    return {"kl_negative": m["kl/ref"] < NEGATIVE_KL_NATS,
            "ratio": m.get("ppo/ratio_max", 1.0) > RATIO_LIMIT,
            "entropy": bool(h0) and "policy/entropy" in m and m["policy/entropy"] < ENTROPY_COLLAPSE_FRACTION * h0,
            "length": bool(n0) and not n0 / LENGTH_DRIFT_FACTOR <= m["response/length"] <= n0 * LENGTH_DRIFT_FACTOR,
            "first_ratio": m.get("ppo/first_ratio_dev", 0.0) > FIRST_RATIO_TOL["fp32"]}


def _expected_warnings(rows):
    """Warnings predicted from the logged metrics: one when a condition becomes true, none while
    it stays true, again after it cleared."""
    base = {k: rows[0][k] for k in ("policy/entropy", "response/length")}
    active, out = set(), []
    for row in rows:
        for name, on in _conditions(row, base).items():
            if on and name not in active:
                active.add(name)
                out.append((row["step"], name))
            elif not on:
                active.discard(name)
    return out, active


def test_high_learning_rate_trips_the_watchdog_as_the_metrics_predict(sft_model, tmp_path, caplog):
    out = tmp_path / "wild"
    with caplog.at_level(logging.WARNING, logger="rlhfkit.ppo"):
        train_ppo(_cfg(sft_model, out, *QUICK, NO_EVAL, "optim.lr=3e-2", "optim.schedule=constant", "ppo_epochs=4"))
    rows = read_metrics(out)
    expected, still_active = _expected_warnings(rows)
    logged = [name for r in caplog.records if r.name == "rlhfkit.ppo"
              for prefix, name in _MESSAGES.items() if r.getMessage().startswith(prefix)]
    assert logged == [name for _, name in expected], (logged, expected)
    assert {"ratio", "length", "entropy"} <= set(logged)  # this run's deterministic provocation
    ratio_step = next(step for step, name in expected if name == "ratio")
    ratio_msg = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("PPO ratio max"))
    assert f"{rows[ratio_step - 1]['ppo/ratio_max']:.3g}" in ratio_msg
    # The watchdog's episodes and baselines are in the checkpoint (so a resume does not warn again).
    watch = json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["watch"]
    assert set(watch["active"]) == still_active
    assert watch["baseline"] == {k: rows[0][k] for k in ("policy/entropy", "response/length")}


def test_watchdog_warns_once_per_episode_and_rearms(caplog):
    logger = logging.getLogger("test.watchdog")
    state: dict = {}
    dog = Watchdog(state, logger)
    row = {"kl/ref": 0.1, "ppo/ratio_max": 1.2, "policy/entropy": 4.0, "response/length": 10.0,
           "ppo/first_ratio_dev": 0.0}
    with caplog.at_level(logging.WARNING, logger="test.watchdog"):
        dog.check(row, fp32=True)
        for ratio in (11.0, 12.0, 2.0, 13.0):
            dog.check({**row, "ppo/ratio_max": ratio}, fp32=True)
        dog.check({**row, "response/length": 16.0, "policy/entropy": 1.9, "kl/ref": -0.2,
                   "ppo/first_ratio_dev": 2e-5}, fp32=True)
        dog.check({**row, "ppo/first_ratio_dev": 2e-5}, fp32=False)  # bf16 tolerance 0.1: fine
    messages = [r.getMessage() for r in caplog.records]
    assert [m.split(" ")[0:3] for m in messages] == [["PPO", "ratio", "max"], ["PPO", "ratio", "max"],
                                                     ["KL", "to", "the"], ["entropy", "collapsed", "to"],
                                                     ["mean", "response", "length"], ["first-minibatch", "ratio",
                                                                                      "deviates"]]
    assert "11" in messages[0] and "13" in messages[1] and "16" in messages[4] and "from 10" in messages[4]
    assert state["baseline"] == {"policy/entropy": 4.0, "response/length": 10.0} and state["active"] == []


# ------------------------------------------------------------------------------------ 4. critic-free estimators
ESTIMATORS = {
    "grpo": ["advantage=grpo", "rollout.group_size=4", "kl.placement=loss", "kl.estimator=k3", "kl.init_coef=0.04",
             "loss_agg=seq_mean_token_mean"],
    "dr_grpo": ["advantage=dr_grpo", "rollout.group_size=4", "kl.placement=loss", "kl.init_coef=0.04",
                "loss_agg=seq_mean_token_sum_norm"],
    "reinforce_pp": ["advantage=reinforce_pp"],
    "reinforce_pp_baseline": ["advantage=reinforce_pp_baseline", "rollout.group_size=4"],
}


def _whiten(x, mask):
    mean = x[mask].mean()
    var = ((x[mask] - mean) ** 2).mean()
    return torch.where(mask, (x - mean) / torch.sqrt(var + 1e-8), 0.0)


def _expected_advantages(name, rec):
    """Each estimator recomputed from the recorded scores / rewards; groups are consecutive blocks
    of `group_size` rows (G samples of one prompt, in order)."""
    scores, rewards, mask = rec["scores"], rec["rewards"], rec["mask"]
    if name in ("grpo", "dr_grpo"):
        seq = rewards.sum(-1)
        blocks = seq.view(-1, 4)
        adv = blocks - blocks.mean(1, keepdim=True)
        if name == "grpo":
            adv = adv / (blocks.std(1, keepdim=True) + 1e-6)
        return torch.where(mask, adv.reshape(-1, 1), 0.0)
    baseline = scores.view(-1, 4).mean(1).repeat_interleave(4) if name == "reinforce_pp_baseline" else 0 * scores
    last = mask.cumsum(-1) == mask.sum(-1, keepdim=True)
    shaped = torch.where(mask & last, rewards - baseline.unsqueeze(-1), torch.where(mask, rewards, 0.0))
    to_go = shaped.flip(-1).cumsum(-1).flip(-1)  # γ = 1
    return _whiten(to_go, mask)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_critic_free_estimators_put_the_kl_where_configured(sft_model, tmp_path, record, name):
    out = tmp_path / name
    cfg = _cfg(sft_model, out, *QUICK, NO_EVAL, "max_steps=3", *ESTIMATORS[name])
    summary = train_ppo(cfg)
    rows = read_metrics(out)
    assert summary["steps"] == 3 and [r["step"] for r in rows] == [1, 2, 3]
    assert not (out / "checkpoints" / "step-00000003" / "pytorch_model_1.bin").exists()  # no critic
    for row in rows:
        assert not any(k.startswith(("loss/value", "value/", "lr/critic")) for k in row), sorted(row)
    in_loss = cfg.kl.placement == "loss"
    for row in rows:
        if in_loss:  # no KL in the rewards: Σ_t r_t is the score itself
            assert row["reward/total"] == pytest.approx(row["reward/score"], abs=1e-6)
        else:  # k1 in the rewards: Σ_t r_t = score − β·Σ_t KL_t
            assert row["reward/total"] == pytest.approx(row["reward/score"] - row["kl/coef"] * row["kl/ref"],
                                                        abs=1e-5)
    assert max(abs(r["kl/ref"]) for r in rows[1:]) > 1e-3  # the policy moved, so either check has teeth
    coefs = _loss_coefs(record)
    if in_loss:  # a KL term in the loss, weighted by β (fixed controller: kl.init_coef)
        assert len(coefs) > 0 and all(c == pytest.approx(cfg.kl.init_coef, rel=1e-5) for _, c in coefs), coefs
        assert all("loss/kl" in r for r in rows) and max(r["loss/kl"] for r in rows[1:]) > 1e-4
        assert all(r["kl/coef"] == pytest.approx(cfg.kl.init_coef) for r in rows)
    else:
        assert all(term == 0 for _, term, _ in record["kl"]) and not any("loss/kl" in r for r in rows)
    for step, rec in record["adv"].items():
        torch.testing.assert_close(rec["advantages"], _expected_advantages(name, rec), rtol=1e-4, atol=1e-5,
                                   msg=f"{name} step {step}")
        assert rec["advantages"].abs().max() > 0.1


def test_kl_in_the_loss_follows_the_adaptive_controller(sft_model, tmp_path, record):
    """With kl.placement=loss and kl.controller=adaptive, the β of the loss's KL term is the
    controller's β of the step (the logged kl/coef), not kl.init_coef frozen at the start."""
    out = tmp_path / "adaptive-loss"
    # horizon = rollout size and a target far below the KL: β moves by the full ±20% each step.
    summary = train_ppo(_cfg(sft_model, out, *QUICK, NO_EVAL, "max_steps=3", *ESTIMATORS["grpo"],
                             "kl.controller=adaptive", "kl.target=0.001", "kl.horizon=8"))
    rows = {r["step"]: r for r in read_metrics(out)}
    assert rows[2]["kl/coef"] != pytest.approx(0.04, rel=0.05) and summary["kl_coef_final"] != 0.04
    assert all(rows[s]["loss/kl"] > 0 for s in (2, 3))  # k3 ≥ 0, and the policy has left the reference
    used = _loss_coefs(record)
    assert {step for step, _ in used} >= {2, 3}, used
    for step, coef in used:
        assert coef == pytest.approx(rows[step]["kl/coef"], rel=1e-5), (step, coef, rows[step]["kl/coef"])


# ------------------------------------------------------------------------------------ 5. value head
def test_value_head_starts_at_zero_and_trains(sft_model, tmp_path, record):
    out = tmp_path / "head"
    train_ppo(_cfg(sft_model, out, *QUICK, NO_EVAL, "max_steps=3", "value.kind=head"))
    rows = read_metrics(out)
    values = record["adv"][1]["values"]
    assert values is not None and torch.count_nonzero(values) == 0  # zero-initialised head: V ≡ 0
    assert rows[0]["value/mean"] == 0 and rows[0]["value/explained_variance"] == pytest.approx(0, abs=1e-6)
    assert all("loss/value" in r for r in rows) and "lr/critic" not in rows[-1]
    assert torch.count_nonzero(record["adv"][2]["values"]) > 0 and rows[1]["value/mean"] != 0
    last = latest_checkpoint(out)
    assert not (last / "pytorch_model_1.bin").exists()  # no separate critic: the head is in the policy
    state = _policy_state(last)
    assert state["value_head.weight"].abs().max() > 0 and state["value_head.bias"].abs().max() > 0


# ------------------------------------------------------------------------------------ 6. reward-model ensembles
NORMS = ((1, 2.0, 1.0), (2, 0.5, -1.0))  # (head seed, gain, bias) of the two RMs


@pytest.fixture(scope="module")
def two_rms(sft_model, tmp_path_factory):
    """Two untrained RMs on the SFT trunk, different heads and stored normalisations."""
    from rlhfkit.models.reward import RewardModel

    paths = []
    for seed, gain, bias in NORMS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rm = RewardModel.from_pretrained(str(sft_model))
        rm.set_normalization(torch.tensor([gain]), torch.tensor([bias]))
        paths.append(str(rm.save(tmp_path_factory.mktemp("rm") / f"rm{seed}")))
    return paths


def _combine(r, mode, coef):
    """docs: mean, worst case, mean − λ·std, mean − λ·var (population statistics over the RMs)."""
    mean, var = r.mean(0), ((r - r.mean(0)) ** 2).mean(0)
    if mode == "mean":
        return mean
    if mode == "min":
        return r.min(0).values
    return mean - coef * (var.sqrt() if mode == "mean_minus_std" else var)


@pytest.mark.parametrize("mode,coef", [("mean", None), ("min", None), ("mean_minus_std", 0.5), ("mean_minus_var", 2.0)])
def test_two_reward_models_combine_as_documented(sft_model, tmp_path, two_rms, mode, coef):
    from rlhfkit.models.reward import load_reward_model

    out = tmp_path / mode
    extra = [] if coef is None else [f"reward.ensemble_coef={coef}"]
    train_ppo(_cfg(sft_model, out, *QUICK, NO_EVAL, "max_steps=1", "advantage=reinforce_pp", "reward.source=rm",
                   f"reward.rm_paths=[{two_rms[0]},{two_rms[1]}]", f"reward.ensemble={mode}", *extra,
                   "sample_every=1", "n_logged_samples=8"))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8  # the whole rollout
    prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
    finished = [s["finished"] for s in samples]
    rms = [load_reward_model(p) for p in two_rms]
    raw = torch.stack([rm.score_texts(prompts, responses, finished, normalized=False)[:, 0] for rm in rms])
    normed = torch.stack([raw[i] * gain + bias for i, (_, gain, bias) in enumerate(NORMS)])
    combined = _combine(normed, mode, coef)
    row = read_metrics(out)[0]
    assert row["reward/rm"] == pytest.approx(float(combined.mean()), abs=1e-5)
    assert row["reward/rm_raw"] == pytest.approx(float(raw.mean()), abs=1e-5)
    penalty = torch.tensor([0.0 if f else 1.0 for f in finished])  # missing-EOS penalty 1, subtracted
    torch.testing.assert_close(torch.tensor([s["score"] for s in samples]), combined - penalty, rtol=0, atol=1e-5)
    # The combination is not trivially one RM or the other on these samples.
    assert not torch.allclose(normed[0], normed[1], atol=1e-3)


def test_uncertainty_modes_without_a_coefficient_are_refused_at_load(sft_model, two_rms, tmp_path):
    """An uncertainty-weighted ensemble without λ is refused when the config loads, naming the
    field, not at the first scoring after the models are loaded."""
    with pytest.raises(ValueError, match="needs reward.ensemble_coef"):
        _cfg(sft_model, tmp_path / "run", "reward.source=rm", f"reward.rm_paths=[{two_rms[0]},{two_rms[1]}]",
             "reward.ensemble=mean_minus_std")


def test_ptx_demonstrations_from_a_file(sft_model, tmp_path):
    """`ptx.data_path`: the first `n_examples` SFT records of the file, tokenised like SFT's; a bad
    record stops the run naming file and line; a run mixes their NLL into the update."""
    from rlhfkit.data.errors import DataError
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.text import encode_prompt, encode_response
    from rlhfkit.train.ppo_setup import load_ptx_examples

    rows = [{"prompt": f"Review film number {i}.", "response": f"A fine film, number {i}."} for i in range(6)]
    good = tmp_path / "ptx.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(sft_model, tmp_path / "run", *QUICK, NO_EVAL, "max_steps=2", "ptx.coef=0.5", "ptx.batch_size=2",
               "ptx.n_examples=4", f"ptx.data_path={good}", "data.task=null")
    tokenizer = load_tokenizer(str(sft_model))
    assert load_ptx_examples(cfg, None, tokenizer) == [
        (encode_prompt(tokenizer, r["prompt"]), encode_response(tokenizer, r["response"])) for r in rows[:4]]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "No answer."}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2.*response"):
        load_ptx_examples(cfg.model_copy(update={"ptx": cfg.ptx.model_copy(update={"data_path": str(bad)})}),
                          None, tokenizer)

    # No task at all: prompts, reward and demonstrations all come from outside.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Review film {i}."}) + "\n" for i in range(64)))
    train_ppo(_cfg(sft_model, tmp_path / "run", *QUICK, "max_steps=2", "ptx.coef=0.5", "ptx.batch_size=2",
                   "ptx.n_examples=4", f"ptx.data_path={good}", "data.task=null", f"data.prompts_path={prompts}",
                   "data.prompts_skip=8", *_callable("constant_reward")))
    rows_logged = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows_logged] == [1, 2] and all(r["loss/ptx"] > 0 for r in rows_logged)


def test_batch_sizes_must_split_into_whole_groups_per_process():
    from rlhfkit.config.base import load_config
    from rlhfkit.config.ppo import PPOConfig
    from rlhfkit.train.ppo import derived_sizes

    cfg = load_config(PPOConfig, None, ["reward.source=gold", "value.init=policy", "rollout_batch_size=48",
                                        "minibatch_size=12", "microbatch_size=3", "advantage=grpo",
                                        "rollout.group_size=8"])
    # 6 prompts of 8 responses: 3 each on 2 processes; on 4, 16/16/8/8 rows would hang the update.
    assert derived_sizes(cfg, 2)["rollout_per_process"] == 24
    with pytest.raises(ValueError, match="6 prompts per step must split evenly over 4 processes"):
        derived_sizes(cfg, 4)


def test_reward_batch_size_sets_the_rm_forward_batch(sft_model, two_rms, tmp_path, monkeypatch):
    from rlhfkit.train.ppo_setup import build_scorer, load_reward_models

    cfg = _cfg(sft_model, tmp_path / "run", "reward.source=rm", f"reward.rm_paths=[{two_rms[0]}]",
               "reward.batch_size=3")
    (rm,) = load_reward_models(cfg.reward.rm_paths)
    calls, forward = [], rm.forward
    monkeypatch.setattr(rm, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    scores = build_scorer(cfg.reward, None, [rm])(["Review the film."] * 7, ["Great fun."] * 7, [True] * 7)
    assert len(calls) == 3 and scores["score"].shape == (7,)  # ⌈7 / 3⌉ forward passes
