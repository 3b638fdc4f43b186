"""The PPO loop end to end on the built-in task: it raises the gold reward of held-out prompts
above the SFT model's at a bounded KL (GAE and RLOO), resumes exactly, and stops cleanly."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rlhfkit.config.base import load_config
from rlhfkit.config.ppo import PPOConfig
from rlhfkit.rundir import read_metrics
from rlhfkit.train.ppo import TrainingStopped, train_ppo
from rlhfkit.train.run import latest_checkpoint

# Learning runs: small rollouts, constant LR, gold reward as the score (no RM needed).
LEARN = ["max_steps=15", "rollout_batch_size=32", "minibatch_size=16", "microbatch_size=16", "ppo_epochs=4",
         "rollout.max_new_tokens=48", "rollout.temperature=1.0", "optim.lr=3e-4", "optim.schedule=constant",
         "critic_optim.lr=1e-3", "data.n_eval_prompts=128"]
# Mechanics runs: as small as possible.
QUICK = ["max_steps=4", "rollout_batch_size=8", "minibatch_size=4", "microbatch_size=2", "ppo_epochs=2",
         "rollout.max_new_tokens=12", "data.n_eval_prompts=4", "data.n_train_prompts=64", "run.save_every=1"]

_CALLS = {"n": 0}


def _cfg(sft_model, out, *extra):
    return load_config(PPOConfig, None, [f"policy.path={sft_model}", "reward.source=gold", "run.progress=false",
                                         "data.n_train_prompts=512", f"run.out_dir={out}", *extra])


def _check_learned(summary, metrics):
    assert summary["gold_reward_final"] > summary["gold_reward_sft"] + 0.3, summary
    assert 0 < summary["kl_to_ref_final"] < 15, summary
    for key in ("reward/rm", "reward/gold", "kl/ref", "kl/coef", "loss/policy", "ppo/clipfrac", "ppo/approx_kl",
                "ppo/ratio_mean", "ppo/ratio_max", "policy/entropy", "response/length", "response/eos_fraction",
                "response/distinct_2", "time/rollout", "time/update"):
        assert key in metrics[-1], key
    first_step = next(row for row in metrics if row["step"] == 1)  # step-0 rows are critic pre-training
    assert first_step["ppo/first_ratio_dev"] < 1e-5  # c17, fp32


def test_ppo_with_gae_raises_gold_reward(sft_model, tmp_path):
    # Unclipped values and two critic warm-up rollouts: the critic must reach returns of ≈ −3 fast.
    summary = train_ppo(_cfg(sft_model, tmp_path / "gae", *LEARN, "value_clip_eps=null", "value.pretrain_steps=2"))
    metrics = read_metrics(tmp_path / "gae")
    _check_learned(summary, metrics)
    assert "value/explained_variance" in metrics[-1] and "loss/value" in metrics[-1]


def test_rloo_raises_gold_reward(sft_model, tmp_path):
    summary = train_ppo(_cfg(sft_model, tmp_path / "rloo", *LEARN, "advantage=rloo", "rollout.group_size=4"))
    metrics = read_metrics(tmp_path / "rloo")
    _check_learned(summary, metrics)
    assert "loss/value" not in metrics[-1]  # critic-free: no value function at all


def _weights(run_dir):
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_killed_and_resumed_run_equals_uninterrupted(sft_model, tmp_path):
    common = [*QUICK, "kl.controller=adaptive", "kl.horizon=64", "ptx.coef=0.5", "ptx.batch_size=2",
              "ptx.n_examples=16"]
    full = train_ppo(_cfg(sft_model, tmp_path / "full", *common))
    assert train_ppo(_cfg(sft_model, tmp_path / "resumed", *common, "run.stop_after_steps=2")) == {"stopped_at_step": 2}
    resumed = train_ppo(_cfg(sft_model, tmp_path / "resumed", *common))
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    assert resumed["kl_coef_final"] == full["kl_coef_final"] != 0.05  # the adaptive β moved and was restored
    rows_full, rows_resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in rows_resumed] == [1, 2, 3, 4]
    for x, y in zip(rows_full, rows_resumed):
        assert x["reward/score"] == y["reward/score"] and x["kl/coef"] == y["kl/coef"]


def test_kl_limit_stops_with_message_and_keeps_last_checkpoint(sft_model, tmp_path):
    out = tmp_path / "kl"
    with pytest.raises(TrainingStopped, match="exceeds kl.max_kl=0.02"):
        train_ppo(_cfg(sft_model, out, *QUICK, "optim.lr=3e-3", "kl.max_kl=0.02"))
    last = latest_checkpoint(out)
    assert last is not None and not (out / "model").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] and str(last) in summary["reason"]
    rows = read_metrics(out)
    assert rows[-1]["step"] == int(last.name.split("-")[1]) and rows[-1]["kl/ref"] <= 0.02


def nan_after_first_step(prompts, responses, finished):
    """A reward callable that breaks after its first call (8 responses a step in QUICK)."""
    _CALLS["n"] += 1
    return [math.nan if _CALLS["n"] > 1 else 1.0] * len(prompts)


def test_non_finite_loss_skips_then_stops(sft_model, tmp_path):
    _CALLS["n"] = 0
    out = tmp_path / "nan"
    with pytest.raises(TrainingStopped, match="non-finite loss"):
        train_ppo(_cfg(sft_model, out, *QUICK, "reward.source=callable", "data.n_eval_prompts=0",
                       f"reward.callable={__name__}:nan_after_first_step", "stop.max_skipped_minibatches=3"))
    assert latest_checkpoint(out).name == "step-00000001"
    weights = torch.load(latest_checkpoint(out) / "pytorch_model.bin", weights_only=True)
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1] and rows[0]["ppo/skipped_minibatches"] == 0


@pytest.mark.slow
def test_adaptive_kl_holds_kl_near_target(sft_model, tmp_path):
    """The documented adaptive-KL run (docs/ppo.md): β steers the sequence KL to the target."""
    summary = train_ppo(_cfg(sft_model, tmp_path / "akl", *LEARN, "max_steps=60", "kl.controller=adaptive",
                             "kl.target=2.0", "kl.horizon=64", "kl.init_coef=0.05"))
    kls = [r["kl/ref"] for r in read_metrics(tmp_path / "akl")][40:]
    assert abs(sum(kls) / len(kls) - 2.0) < 0.4, (kls, summary)  # window mean ±20% of target (rlhf-details §4)
    assert summary["kl_coef_final"] > 0.2  # β had to rise to hold the KL down


def response_length_reward(prompts, responses, finished):
    """A reward callable: longer answers score higher (words)."""
    return [float(len(r.split())) for r in responses]


def test_prompt_files_in_hh_layout_with_skip_and_held_out_eval(sft_model, tmp_path):
    from rlhfkit.tasks import get_task

    prompts = [p.prompt for p in get_task("reviews", seed=0).prompts("train", 40)]
    rows = [{"chosen": f"\n\nHuman: {p}\n\nAssistant: Good.", "rejected": f"\n\nHuman: {p}\n\nAssistant: Bad."}
            for p in prompts]
    rows.insert(3, {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"})
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    summary = train_ppo(_cfg(sft_model, out, *QUICK, "max_steps=1", "data.task=null", f"data.prompts_path={path}",
                             "data.prompts_skip=8", f"data.eval_prompts_path={path}", "data.n_eval_prompts=4",
                             "data.on_error=skip", "reward.source=callable", "sample_every=1",
                             f"reward.callable={__name__}:response_length_reward"))
    derived = yaml.safe_load((out / "config.yaml").read_text())["derived"]
    # 41 rows, one without a shared prompt (counted), 8 held back for evaluation → 32 training prompts.
    assert derived["train_prompts"] == 32
    assert derived["skipped"] == {"train_no_shared_prompt": 1, "eval_no_shared_prompt": 1}
    assert summary["rm_reward_sft"] is not None and summary["rm_reward_final"] is not None
    assert "gold_reward_final" not in summary
    # Chat prompts (HH rows become message lists) are logged with their structure.
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"][0]["role"] == "user" and isinstance(sample["response"], str)


def _run_on_two_processes(driver_code: str, sft_model, tmp_path, extra: list[str], timeout: int):
    """Run `driver_code` (argv: run dir, then config overrides) in 2 gloo processes on QUICK
    settings with the gold reward; return the run directory."""
    import os
    import signal

    driver = tmp_path / "driver.py"
    driver.write_text(driver_code)
    out = tmp_path / "run"
    out.mkdir()
    overrides = [f"policy.path={sft_model}", "reward.source=gold", "run.progress=false", f"run.out_dir={out}",
                 *QUICK, *extra]
    # torchrun + ACCELERATE_USE_CPU gives Accelerate 2 gloo processes (MULTI_CPU); `accelerate launch
    # --cpu --num_processes 2` starts a single process (its simple launcher), which would prove nothing.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(driver), str(out), *overrides]
    # A session of its own, so that a timeout kills the workers too (blocked in gloo, they would
    # outlive a killed launcher).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"})
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return out


# Runs train_ppo in each launched process, recording what each process saw: the inputs and output
# of the advantage stage every step, and its final weights (policy and critic).
_DRIVER = '''
import sys
import torch
import rlhfkit.train.ppo as P
from rlhfkit.config.base import load_config
from rlhfkit.config.ppo import PPOConfig

out, overrides = sys.argv[1], sys.argv[2:]
advantages_stage, update_stage, finish = P.advantages_stage, P.update_stage, P.finish

def recording_advantages(ctx, batch, ref_logprobs, values, rewards):
    exp, metrics = advantages_stage(ctx, batch, ref_logprobs, values, rewards)
    torch.save({"rewards": rewards, "values": values, "mask": batch.rollout.response_mask, "scores": batch.scores,
                "advantages": exp.advantages},
               f"{out}/adv-{ctx.state['step'] + 1}-{ctx.accelerator.process_index}.pt")
    return exp, metrics

def recording_update(ctx, exp, step):
    stats, skipped = update_stage(ctx, exp, step)
    torch.save(stats, f"{out}/update-{step}-{ctx.accelerator.process_index}.pt")
    return stats, skipped

def recording_finish(ctx, reason):
    unwrap = ctx.accelerator.unwrap_model
    torch.save({"policy": unwrap(ctx.models.policy).state_dict(), "critic": unwrap(ctx.models.critic).state_dict()},
               f"{out}/weights-{ctx.accelerator.process_index}.pt")
    return finish(ctx, reason)

P.advantages_stage, P.update_stage, P.finish = recording_advantages, recording_update, recording_finish
P.train_ppo(load_config(PPOConfig, None, overrides))
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_stay_in_sync_with_global_metrics_and_whitening(sft_model, tmp_path):
    """PPO (GAE, separate critic, gold reward) on 2 CPU processes (Accelerate's MULTI_CPU, gloo):
    it runs to the end; both processes hold identical weights; the logged metrics are means over
    both processes' rollouts (maxima: the larger of the two); advantages are whitened with global statistics, i.e. equal to one
    process whitening all 2 × 4 rows of the step."""
    from rlhfkit.algos.advantages import gae
    from rlhfkit.algos.masking import masked_whiten

    out = _run_on_two_processes(_DRIVER, sft_model, tmp_path, ["max_steps=3", "run.save_every=10"], timeout=580)

    assert yaml.safe_load((out / "config.yaml").read_text())["derived"]["num_processes"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["stop_reason"] == "max_steps"
    w0, w1 = (torch.load(out / f"weights-{rank}.pt", weights_only=True) for rank in (0, 1))
    for net in ("policy", "critic"):
        for name in w0[net]:
            torch.testing.assert_close(w1[net][name], w0[net][name], rtol=0, atol=0, msg=f"{net}.{name}")
    start = load_file(str(sft_model / "model.safetensors"))
    assert any(not torch.equal(w0["policy"]["lm." + k], v) for k, v in start.items())  # it trained

    rows = {r["step"]: r for r in read_metrics(out)}
    assert sorted(rows) == [1, 2, 3]
    for step, row in rows.items():
        shards = [torch.load(out / f"adv-{step}-{rank}.pt", weights_only=True) for rank in (0, 1)]
        assert not torch.equal(shards[0]["scores"], shards[1]["scores"])  # the processes saw different rollouts
        both = {k: torch.cat([s[k] for s in shards]) for k in shards[0]}
        assert row["reward/score"] == pytest.approx(float(both["scores"].mean()), rel=1e-5)
        assert row["response/length"] == pytest.approx(float(both["mask"].sum(1).float().mean()), rel=1e-5)
        updates = [torch.load(out / f"update-{step}-{rank}.pt") for rank in (0, 1)]
        assert row["ppo/ratio_max"] == pytest.approx(max(u["ppo/ratio_max"] for u in updates), rel=1e-6)
        assert row["loss/policy"] == pytest.approx(sum(u["loss/policy"] for u in updates) / 2, rel=1e-5, abs=1e-7)
        one_process = masked_whiten(gae(both["rewards"], both["values"], both["mask"], 1.0, 0.95)[0], both["mask"])
        torch.testing.assert_close(both["advantages"], one_process, rtol=1e-5, atol=1e-6)
        per_process = masked_whiten(gae(shards[0]["rewards"], shards[0]["values"], shards[0]["mask"], 1.0, 0.95)[0],
                                    shards[0]["mask"])
        assert not torch.allclose(shards[0]["advantages"], per_process, rtol=1e-3)


def test_recomputed_old_logprobs_bring_the_bf16_first_ratio_back_to_one(sft_model, tmp_path):
    devs = {}
    for recompute in (False, True):
        out = tmp_path / f"recompute-{recompute}"
        # bf16 in a fresh process: Accelerate's precision is fixed once per process.
        cmd = [sys.executable, "-m", "rlhfkit.cli", "ppo", f"policy.path={sft_model}", "reward.source=gold",
               "run.progress=false", "data.n_train_prompts=64", f"run.out_dir={out}", *QUICK, "max_steps=1",
               "data.n_eval_prompts=0", "run.precision=bf16", f"rollout.recompute_logprobs={str(recompute).lower()}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=280)
        assert result.returncode == 0, result.stderr[-3000:]
        devs[recompute] = read_metrics(out)[-1]["ppo/first_ratio_dev"]
    # Generation's KV-cache decoding rounds differently from the full forward in bf16; the
    # recomputed log-probs come from the same forward as the update's.
    assert devs[True] < 1e-5 < devs[False], devs


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_compiled_training_forward_trains_like_the_eager_one(sft_model, tmp_path, lora):
    runs = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        train_ppo(_cfg(sft_model, out, *QUICK, "max_steps=2", "data.n_eval_prompts=0", "attention=eager",
                       f"compile={str(compiled).lower()}", f"policy.lora.enabled={str(lora).lower()}"))
        runs[compiled] = (_weights(out), read_metrics(out))
    (eager_w, _), (comp_w, comp_rows) = runs[False], runs[True]
    assert comp_rows[0]["ppo/first_ratio_dev"] < 1e-5  # compiled forward vs generation's log-probs
    for name in eager_w:  # same samples (same seed), the same updates up to fused-kernel rounding
        torch.testing.assert_close(comp_w[name], eager_w[name], rtol=0, atol=1e-5, msg=name)
    start = load_file(str(sft_model / "model.safetensors"))
    moved = max((eager_w[n] - start[n]).abs().max().item() for n in eager_w if n in start)
    assert moved > 2e-4  # the updates were real (≈ 5e-4), 20× the tolerance above


def test_prompt_file_fills_n_past_too_long_rows_and_eval_stays_before_the_skip(sft_model, tmp_path):
    from collections import Counter

    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.train.ppo_setup import load_prompts

    long = " ".join(["word"] * 200)
    texts = [long, "a short one", long, "b short", "c short", "d short", "e", "f", "g", "h", "i", "j"]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    tokenizer = load_tokenizer(sft_model)

    def load(split, n):
        cfg = _cfg(sft_model, tmp_path / "run", f"data.prompts_path={path}", f"data.eval_prompts_path={path}",
                   "data.prompts_skip=6", "data.max_prompt_tokens=32")
        skips = Counter()
        return load_prompts(cfg, None, tokenizer, split, n, skips).prompts, skips

    assert load("eval", 3) == (["a short one", "b short", "c short"], {"eval_prompt_too_long": 2})
    # Only 4 usable rows before the skip: evaluation never reads on into the training rows.
    assert load("eval", 5) == (["a short one", "b short", "c short", "d short"], {"eval_prompt_too_long": 2})
    assert load("train", 4) == (["e", "f", "g", "h"], {})


def test_evaluating_on_the_training_file_without_a_skip_is_refused(sft_model, tmp_path):
    from collections import Counter

    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.train.ppo_setup import load_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("a", "b", "c")))
    cfg = _cfg(sft_model, tmp_path / "run", f"data.prompts_path={path}",
               f"data.eval_prompts_path={tmp_path}/../{tmp_path.name}/prompts.jsonl")  # same file, other spelling
    with pytest.raises(ValueError, match="data.prompts_skip is 0"):
        load_prompts(cfg, None, load_tokenizer(sft_model), "eval", 2, Counter())


# Rank 0's loss turns non-finite from step 2 (4 micro-batches a step per process in QUICK); rank 1's
# stays finite. Each process records why it stopped.
_ONE_RANK_NAN_DRIVER = '''
import os, sys
import rlhfkit.train.ppo as P
import rlhfkit.train.ppo_update as U
from rlhfkit.config.base import load_config
from rlhfkit.config.ppo import PPOConfig

out, overrides = sys.argv[1], sys.argv[2:]
real_micro_losses, calls = U.micro_losses, [0]

def flaky_micro_losses(*args, **kwargs):
    terms, stats = real_micro_losses(*args, **kwargs)
    calls[0] += 1
    if os.environ["RANK"] == "0" and calls[0] > 4:
        terms["policy"] = terms["policy"] * float("nan")
    return terms, stats

U.micro_losses = flaky_micro_losses
try:
    P.train_ppo(load_config(PPOConfig, None, overrides))
except P.TrainingStopped as stopped:
    with open(f"{out}/stopped-{os.environ['RANK']}.txt", "w") as fh:
        fh.write(str(stopped))
'''


@pytest.mark.slow
def test_a_non_finite_loss_on_one_process_is_skipped_on_all(sft_model, tmp_path):
    """DDP on 2 CPU processes: when one process's loss is non-finite, every process skips that
    minibatch (a lone skip would hang the gradient all-reduce or let the weights part), and the
    run stops on the skip limit on both with the last good checkpoint intact."""
    out = _run_on_two_processes(_ONE_RANK_NAN_DRIVER, sft_model, tmp_path,
                                ["data.n_eval_prompts=0", "stop.max_skipped_minibatches=3"], timeout=180)
    for rank in (0, 1):  # both skipped step 2's 4 minibatches and stopped there
        assert "4 minibatches had a non-finite loss" in (out / f"stopped-{rank}.txt").read_text()
    assert latest_checkpoint(out).name == "step-00000001"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1]
