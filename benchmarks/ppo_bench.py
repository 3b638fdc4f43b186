"""PPO throughput: rlhfkit's `train_ppo` against TRL 1.12's PPOTrainer on the same tiny workload.

One invocation runs the TRL anchor (`../shared/bench/anchors/trl_ppo_bench.py` in its own venv,
made by `ONLY=ppo bash run.sh`) and three rlhfkit configurations, each in a fresh process, and
prints ONE JSON line:

- `critic_fp32`: a separate critic initialised from the reward model, fp32 — the like-for-like
  configuration (TRL's value model is a separate network initialised from the RM);
- `head_fp32`: a value head on the policy trunk (one fewer network to run and train);
- `critic_bf16`: the like-for-like configuration under bf16 autocast;
- `*_compiled`: with `compile=true attention=eager` (torch.compile'd training forward and
  backward, eager attention: PyTorch's bf16 flash-attention backward is slow on CPU).

Same model shape (make_tiny_model.py: Llama, hidden 256, 4 layers, vocab 2048), same prompts
(prompt_texts, 16–32 tokens), 48 new tokens, rollout batch 64, 2 minibatches, 4 PPO epochs, k1 KL
in the reward with β 0.05, missing-EOS penalty 1, temperature 0.7, lr 3e-6. Per-phase times are
medians over iterations 2..N (the first carries one-off warm-up), as the anchor does.

    python benchmarks/ppo_bench.py [--iterations 8] [--trl-python /tmp/av-ppo/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ANCHORS = Path(os.environ.get("RLHFKIT_ANCHORS", Path(__file__).resolve().parents[2] / "shared/bench/anchors"))
CRITIC = ["value.kind=critic", "value.init=rm"]
COMPILED = ["compile=true", "attention=eager"]
VARIANTS = {
    "critic_fp32": [*CRITIC, "run.precision=fp32"],
    "critic_fp32_compiled": [*CRITIC, "run.precision=fp32", *COMPILED],
    "head_fp32": ["value.kind=head", "run.precision=fp32"],
    "critic_bf16": [*CRITIC, "run.precision=bf16"],
    "critic_bf16_compiled": [*CRITIC, "run.precision=bf16", *COMPILED],
    "head_bf16_compiled": ["value.kind=head", "run.precision=bf16", *COMPILED],
}
WORKLOAD = {"n_prompts": 256, "prompt_tokens": [16, 32], "response_length": 48, "rollout_batch": 64,
            "num_mini_batches": 2, "ppo_epochs": 4, "temperature": 0.7, "lr": 3e-6, "kl_coef": 0.05,
            "kl_estimator": "k1", "missing_eos_penalty": 1.0, "vf_coef": 0.1, "cliprange": 0.2,
            "cliprange_value": 0.2, "gamma": 1.0, "lam": 0.95, "seed": 0}


def _anchor_modules():
    sys.path.insert(0, str(ANCHORS))
    import make_tiny_model as mtm

    return mtm


def make_workload(root: Path) -> dict:
    """The anchor's policy, reward model (re-saved in rlhfkit's RM format with the same head
    weights) and prompt texts cut to 16–32 tokens."""
    import random

    import torch
    from safetensors.torch import load_file

    from rlhfkit.models.reward import RewardModel

    mtm = _anchor_modules()
    spec = mtm.TinyModelSpec(seed=WORKLOAD["seed"])
    tok = mtm.train_tokenizer(spec)
    policy_dir = mtm.make_tiny_model(root / "policy", spec, kind="causal_lm", tokenizer=tok)
    trl_rm_dir = mtm.make_tiny_model(root / "reward_hf", spec, kind="reward", seed_offset=1, tokenizer=tok)
    rm = RewardModel.from_pretrained(trl_rm_dir)
    score = load_file(str(next(trl_rm_dir.glob("*.safetensors"))))["score.weight"]
    with torch.no_grad():
        rm.head.weight.copy_(score)
    rm.save(root / "reward")
    rng = random.Random(WORKLOAD["seed"] + 7)
    lo, hi = WORKLOAD["prompt_tokens"]
    lines = []
    for text in mtm.prompt_texts(mtm.make_lexicon(spec.seed), WORKLOAD["seed"], WORKLOAD["n_prompts"], hi):
        ids = tok(text, add_special_tokens=False)["input_ids"][-rng.randint(lo, hi):]
        lines.append(json.dumps({"prompt": tok.decode(ids)}))
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return {"policy": str(policy_dir), "reward": str(root / "reward"), "prompts": str(root / "prompts.jsonl")}


def run_ours(paths: dict, variant: str, iterations: int, threads: int, out: Path) -> dict:
    """train_ppo on the workload (in this process); per-phase medians from metrics.jsonl."""
    from rlhfkit.config.base import load_config
    from rlhfkit.config.ppo import PPOConfig
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.rundir import read_metrics

    w = WORKLOAD
    overrides = [
        f"policy.path={paths['policy']}", "data.task=null", f"data.prompts_path={paths['prompts']}",
        f"data.n_train_prompts={w['n_prompts']}", "data.n_eval_prompts=0", "reward.source=rm",
        f"reward.rm_paths=[{paths['reward']}]", f"reward.missing_eos_penalty={w['missing_eos_penalty']}",
        f"rollout.max_new_tokens={w['response_length']}", f"rollout.temperature={w['temperature']}",
        f"rollout_batch_size={w['rollout_batch']}", f"minibatch_size={w['rollout_batch'] // w['num_mini_batches']}",
        f"microbatch_size={w['rollout_batch'] // w['num_mini_batches']}", f"forward_batch_size={w['rollout_batch']}",
        f"ppo_epochs={w['ppo_epochs']}", f"max_steps={iterations}", f"kl.init_coef={w['kl_coef']}",
        f"kl.estimator={w['kl_estimator']}", f"vf_coef={w['vf_coef']}", f"clip_eps={w['cliprange']}",
        f"value_clip_eps={w['cliprange_value']}", f"gamma={w['gamma']}", f"gae_lambda={w['lam']}",
        f"optim.lr={w['lr']}", f"critic_optim.lr={w['lr']}", "optim.max_grad_norm=null",
        "critic_optim.max_grad_norm=null", f"run.out_dir={out}", "run.progress=false", "run.save_every=1000000",
        f"run.seed={w['seed']}", f"run.num_threads={threads}", "n_logged_samples=0", *VARIANTS[variant],
    ]
    start = time.perf_counter()
    train_ppo(load_config(PPOConfig, None, overrides))
    wall = time.perf_counter() - start
    rows = read_metrics(out)[1:]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    step = med("time/step")
    return {"iter_s": step, "generation_s": med("time/rollout"),
            "scoring_s": med("time/score") + med("time/reference"), "update_s": med("time/update"),
            "samples_per_s": w["rollout_batch"] / step,
            "generated_tokens_per_s": statistics.median(r["response/length"] * w["rollout_batch"] / r["time/step"]
                                                        for r in rows),
            "eos_fraction": med("response/eos_fraction"), "first_ratio_dev": rows[0].get("ppo/first_ratio_dev"),
            "train_wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_trl(python: str, iterations: int, threads: int) -> dict:
    w = WORKLOAD
    cmd = [python, str(ANCHORS / "trl_ppo_bench.py"), "--iterations", str(iterations), "--threads", str(threads),
           "--n-prompts", str(w["n_prompts"]), "--response-length", str(w["response_length"]),
           "--rollout-batch", str(w["rollout_batch"]), "--num-mini-batches", str(w["num_mini_batches"]),
           "--ppo-epochs", str(w["ppo_epochs"]), "--kl-coef", str(w["kl_coef"]), "--kl-estimator", w["kl_estimator"]]
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    return {"iter_s": r["iter_s"]["median"], "generation_s": r["generation_s"]["median"],
            "scoring_s": r["scoring_s"]["median"], "update_s": r["update_s"]["median"],
            "samples_per_s": WORKLOAD["rollout_batch"] / r["iter_s"]["median"],
            "generated_tokens_per_s": r["generated_tokens_per_s_end_to_end"], "eos_fraction": r["eos_fraction"],
            "peak_rss_mib": r["peak_rss_mib"]}


def child(args) -> None:
    """One of our variants in a fresh process (own peak RSS); prints its JSON."""
    with tempfile.TemporaryDirectory(prefix="ppo-bench-") as tmp:
        paths = json.loads(args.paths)
        result = run_ours(paths, args.variant, args.iterations, args.threads, Path(tmp) / "run")
    sys.__stdout__.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both sides; 1 avoids OpenMP oversubscription on a shared machine")
    parser.add_argument("--trl-python", default=os.environ.get("AV_PPO", "/tmp/av-ppo") + "/bin/python")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="ppo-bench-data-") as tmp:
        paths = make_workload(Path(tmp))
        ours = {}
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--paths", json.dumps(paths),
                                   "--iterations", str(args.iterations), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            ours[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    trl = run_trl(args.trl_python, args.iterations, args.threads)
    record = {"bench": "rlhfkit_ppo_vs_trl",
              "workload": {**WORKLOAD, "iterations": args.iterations, "threads": args.threads},
              "trl_1_12": trl, "ours": ours,
              "ratio_vs_trl": ours["critic_fp32"]["samples_per_s"] / trl["samples_per_s"],
              **{f"ratio_vs_trl_{name}": ours[name]["samples_per_s"] / trl["samples_per_s"]
                 for name in VARIANTS if name != "critic_fp32"},
              "caveats": ["ratio_vs_trl is like-for-like: separate critic initialised from the RM, fp32",
                          "our RM re-tokenises decoded text (any tokenizer pair); TRL scores the policy's ids",
                          "ours skips the LM head on prompt columns (logits_to_keep); TRL computes all columns",
                          "*_compiled: the first iteration (excluded from the medians) carries the compilation",
                          "absolute seconds drift 10-30% on shared 2-core machines; compare ratios"]}
    sys.__stdout__.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
