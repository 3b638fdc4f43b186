"""`rlhfkit demo`: the seed pipeline on the built-in task, each stage in its own run directory.

build the task → SFT → sample K candidates from two policy variants → label with simulated
annotators → reward model (accuracy vs the Bayes ceiling) → PPO → evaluation by the gold judge →
HTML report. Every arrow is a file under `--out`, so each stage can be rerun or replaced alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from rlhfkit.config.demo import DemoConfig
from rlhfkit.config.eval import EvalConfig
from rlhfkit.config.judge import JudgeLabelConfig
from rlhfkit.config.sample import SampleConfig
from rlhfkit.rundir import atomic_write_text

TASK = "reviews"


def _with(cfg, **changes):
    """A copy of a frozen config with some (nested, as dicts) fields replaced, validated again."""
    data = cfg.model_dump()
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return type(cfg).model_validate(data)


def _stage(console: Console, index: int, name: str) -> None:
    console.rule(f"[bold]stage {index}/8 · {name}")


def collect_preferences(cfg: DemoConfig, out: Path, policy_dir: Path, policy_name: str, split: str, n: int,
                        tag: str = "") -> dict[str, Any]:
    """Sample candidates from the two temperature variants of the policy (provenance
    `{policy_name}-T{temperature}`) and rank them with simulated annotators; returns the labelling
    summary (with the Bayes ceiling) and the path of the rankings file."""
    from rlhfkit.eval.label_auto import label_candidates
    from rlhfkit.rollout.candidates import sample_candidates

    s = cfg.sampling
    variants = [{"path": str(policy_dir), "name": f"{policy_name}-T{t}", "temperature": t, "seed": cfg.seed + i,
                 "samples_per_prompt": s.samples_per_variant} for i, t in enumerate(s.temperatures)]
    candidates = out / "data" / f"candidates-{split}{tag}.jsonl"
    sample_candidates(SampleConfig.model_validate({
        "variants": variants, "prompts": {"task": TASK, "task_seed": cfg.seed, "split": split, "n": n},
        "max_new_tokens": s.max_new_tokens, "output": str(candidates),
        "run": {"out_dir": str(out / f"sample-{split}{tag}"), "device": "cpu", "progress": True},
    }))
    rankings = out / "data" / f"rankings-{split}{tag}.jsonl"
    judge = {"kind": "simulated", "n_annotators": cfg.labels.n_annotators}
    if cfg.labels.temperature:
        judge["temperature"] = cfg.labels.temperature
    summary = label_candidates(JudgeLabelConfig.model_validate({
        "candidates": str(candidates), "mode": "ranking", "judge": judge, "task": TASK, "task_seed": cfg.seed,
        "seed": cfg.seed, "output": str(rankings), "run": {"out_dir": str(out / f"label-{split}{tag}")},
    }))
    return {**summary, "path": str(rankings)}


def concatenate(paths: list[str], out: Path) -> str:
    """One JSONL file holding the records of all `paths` (the growing preference dataset)."""
    if len(paths) == 1:
        return paths[0]
    atomic_write_text(out, "".join(Path(p).read_text() for p in paths))
    return str(out)


def evaluate_sft_vs_ppo(cfg: DemoConfig, out: Path, sft_dir: Path, ppo_dir: Path, rm_dir: Path) -> dict:
    from rlhfkit.eval.evaluate import evaluate_models

    e = cfg.eval
    return evaluate_models(EvalConfig.model_validate({
        "models": [{"name": "sft", "path": str(sft_dir)}, {"name": "ppo", "path": str(ppo_dir)}],
        "baseline": "sft", "reference": str(sft_dir), "reward_model": str(rm_dir),
        "prompts": {"task": TASK, "task_seed": cfg.seed, "split": "test", "n": e.n_prompts},
        "decodings": [{"greedy": False, "temperature": e.temperature}],
        "max_new_tokens": e.max_new_tokens, "judge": {"kind": "gold"}, "seed": cfg.seed,
        "perplexity": {"n": 128},
        "run": {"out_dir": str(out / "eval"), "device": "cpu"},
    }))


def headline(eval_summary: dict, rm: dict, labels_eval: dict) -> dict[str, Any]:
    """The figures `summary.json` promises, read out of the stage summaries."""
    decoding = next(iter(eval_summary["decodings"].values()))
    models = decoding["models"]
    win = decoding["win_rate"]["ppo"]
    return {
        "gold_win_rate_vs_sft": win["win_rate"],
        "gold_win_rate_ci95": [win["low"], win["high"]],
        "gold_win_rate_length_matched": win["length_matched"]["win_rate"],
        "gold_reward_sft": models["sft"]["gold"],
        "gold_reward_ppo": models["ppo"]["gold"],
        "kl_to_ref": models["ppo"]["kl"],
        "length_words_sft": models["sft"]["length_words"],
        "length_words_ppo": models["ppo"]["length_words"],
        "rm_accuracy": rm["eval_accuracy"],
        "rm_bayes_ceiling": labels_eval["bayes_ceiling"],
        "rm_accuracy_vs_ceiling": rm["eval_accuracy"] / labels_eval["bayes_ceiling"],
        "label_agreement_with_gold": labels_eval.get("agreement_with_gold"),
        "eval_temperature": decoding.get("temperature"),
    }


def overoptimisation(cfg: DemoConfig, out: Path, sft_model: Path, rm_model: Path, ppo_run: Path) -> dict:
    """Train PPO without a KL penalty for longer, sample a best-of-n curve, fit Gao's forms for
    both, and analyse the main (β > 0) PPO run beside them. Written to `out/overopt.json`."""
    from rlhfkit.eval.bon import best_of_n_study
    from rlhfkit.eval.overopt import overoptimisation_study
    from rlhfkit.train.ppo import train_ppo

    o = cfg.overopt
    unpenalised = out / "ppo-overopt"
    train_ppo(_with(cfg.ppo, policy={"path": str(sft_model)}, max_steps=o.ppo_steps,
                    kl={"controller": "fixed", "init_coef": o.kl_coef},
                    run={"out_dir": str(unpenalised), "seed": cfg.seed, "save_every": o.ppo_steps},
                    reward={"rm_paths": [str(rm_model)]}, data={"task": TASK, "task_seed": cfg.seed}))
    bon = best_of_n_study(sft_model, rm_model, task=TASK, task_seed=cfg.seed, n_prompts=o.bon_prompts,
                          n_max=o.bon_n_max, temperature=cfg.ppo.rollout.temperature,
                          max_new_tokens=cfg.ppo.rollout.max_new_tokens, seed=cfg.seed,
                          out_path=out / "bon.json")
    study = overoptimisation_study(rl=unpenalised, bon=bon, out_path=out / "overopt.json")
    study["rl_with_kl_penalty"] = overoptimisation_study(rl=ppo_run)["rl"]
    return study


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    from rlhfkit.eval.report import write_report
    from rlhfkit.tasks import get_task
    from rlhfkit.train.ppo import train_ppo
    from rlhfkit.train.rm import train_rm
    from rlhfkit.train.sft import train_sft

    out, console = Path(out), Console(stderr=True)
    if cfg.num_threads:
        import torch

        torch.set_num_threads(cfg.num_threads)
    runs = {name: out / name for name in ("sft", "rm", "ppo", "eval")}
    _stage(console, 1, f"build the task '{TASK}' (seed {cfg.seed})")
    get_task(TASK, seed=cfg.seed)

    _stage(console, 2, "supervised fine-tuning")
    sft = train_sft(_with(cfg.sft, run={"out_dir": str(runs["sft"]), "seed": cfg.seed},
                          data={"task": TASK, "task_seed": cfg.seed}))
    sft_model = runs["sft"] / "model"

    labels_eval = None
    train_files: list[str] = []
    policy, policy_name = sft_model, "sft"
    for round_no in range(1, cfg.rounds + 1):
        # Round 1 samples from SFT; later rounds from the latest PPO policy, the RM is retrained on
        # the growing dataset and PPO continues from where it stopped, its KL still measured to the
        # SFT model (iterated RLHF, Bai et al.).
        tag = "" if round_no == 1 else f"-round{round_no}"
        _stage(console, 3, f"sample candidates from two policy variants and label them (round {round_no})")
        labels = collect_preferences(cfg, out, policy, policy_name, "train", cfg.sampling.n_train_prompts, tag)
        labels_eval = labels_eval or collect_preferences(cfg, out, sft_model, "sft", "eval",
                                                         cfg.sampling.n_eval_prompts)
        train_files.append(labels["path"])
        runs["rm"], runs["ppo"] = out / f"rm{tag}", out / f"ppo{tag}"

        _stage(console, 4, f"reward model (round {round_no})")
        rm = train_rm(_with(cfg.rm, model={"path": str(sft_model)}, run={"out_dir": str(runs["rm"]), "seed": cfg.seed},
                            data={"train_path": concatenate(train_files, out / "data" / f"rankings-train-all{tag}.jsonl"),
                                  "eval_path": labels_eval["path"], "kind": "ranking", "task": TASK,
                                  "task_seed": cfg.seed},
                            normalize={"policy_path": str(sft_model)}))

        _stage(console, 5, f"PPO against the reward model (round {round_no})")
        ppo = train_ppo(_with(cfg.ppo, policy={"path": str(policy)}, run={"out_dir": str(runs["ppo"]), "seed": cfg.seed},
                              reward={"rm_paths": [str(runs["rm"] / "model")]},
                              **({"kl": {"reference_path": str(sft_model)}} if round_no > 1 else {}),
                              data={"task": TASK, "task_seed": cfg.seed}))
        policy, policy_name = runs["ppo"] / "model", f"ppo-round{round_no}"

    _stage(console, 6, "evaluate SFT vs PPO with the gold judge")
    evaluation = evaluate_sft_vs_ppo(cfg, out, sft_model, runs["ppo"] / "model", runs["rm"] / "model")

    _stage(console, 7, "report" + (" (after the over-optimisation study)" if cfg.overopt.enabled else ""))
    extra: dict[str, Any] = {"title": "rlhfkit demo: SFT → RM → PPO on the reviews task"}
    if cfg.overopt.enabled:
        extra["overoptimisation"] = overoptimisation(cfg, out, sft_model, runs["rm"] / "model", runs["ppo"])
    report = write_report(out / "report.html", {k: str(v) for k, v in runs.items()}, extra)

    _stage(console, 8, "summary")
    summary = {**headline(evaluation, rm, labels_eval), "report": str(report), "rounds": cfg.rounds,
               "gold_reward_untrained": sft.get("gold_reward_before"), "sft_eval_loss": sft["eval_loss"],
               "sft_unigram_loss": sft["unigram_loss"], "ppo_steps": ppo.get("steps"),
               "runs": {k: str(v) for k, v in runs.items()}}
    if cfg.overopt.enabled:
        study = extra["overoptimisation"]
        summary["overoptimisation"] = {
            name: {key: (study[name] or {}).get(key) for key in ("fit", "gold_peak", "proxy_trend", "final_gap")}
            for name in ("rl", "bon", "rl_with_kl_penalty")}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
