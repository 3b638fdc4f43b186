"""The config reference (docs/config-reference.md), generated from the config classes."""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from rlhfkit.config.base import Section


def stage_configs() -> dict[str, type[Section]]:
    """Stage name → config class, in pipeline order."""
    from rlhfkit.config.demo import DemoConfig
    from rlhfkit.config.eval import EvalConfig
    from rlhfkit.config.judge import JudgeLabelConfig
    from rlhfkit.config.ppo import PPOConfig
    from rlhfkit.config.rm import RMConfig
    from rlhfkit.config.sample import SampleConfig
    from rlhfkit.config.sft import SFTConfig

    return {"sft": SFTConfig, "sample": SampleConfig, "judge": JudgeLabelConfig, "rm": RMConfig,
            "ppo": PPOConfig, "eval": EvalConfig, "demo": DemoConfig}


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("|", "\\|")


def _default(field) -> str:
    if field.default is PydanticUndefined:
        return "(required)"
    if isinstance(field.default, BaseModel):
        return "(section)"
    return f"`{field.default!r}`"


def _rows(cls: type[BaseModel], prefix: str, nested: dict[str, type[BaseModel]]) -> list[str]:
    rows = []
    for name, field in cls.model_fields.items():
        key = prefix + name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested[key] = annotation
            rows += _rows(annotation, key + ".", nested)
            continue
        doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{key}` | {_type_name(annotation)} | {_default(field)} | {doc} |")
    return rows


def render_reference() -> str:
    out = ["# Config reference", "",
           "Generated from the config classes by `rlhfkit config-reference`; do not edit by hand.",
           "Every field can be set in the YAML file or on the command line as `dotted.key=value`.", ""]
    for stage, cls in stage_configs().items():
        out += [f"## `{stage}` — {cls.__name__}", "", (cls.__doc__ or "").strip(), "",
                "| field | type | default | meaning |", "|---|---|---|---|"]
        out += _rows(cls, "", {})
        out.append("")
    return "\n".join(out)
