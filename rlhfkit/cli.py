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
def demo(
    args: Optional[list[str]] = typer.Argument(None, help=ARGS_HELP),
    out: str = typer.Option("runs/demo", "--out", help="Directory that keeps every stage's run directory."),
) -> None:
    """The whole pipeline on the built-in task, offline, on embedded defaults."""
    from rlhfkit.config.demo import DemoConfig
    from rlhfkit.demo import run_demo

    _print_summary(run_demo(_load(DemoConfig, args), out))


@app.command("config-reference")
def config_reference() -> None:
    """Print the Markdown reference of every stage config (fields, types, defaults, docs)."""
    from rlhfkit.config.reference import render_reference

    sys.stdout.write(render_reference())


if __name__ == "__main__":
    app()
