"""Typed stage configs: YAML file + dotted `key=value` overrides, validated by pydantic.

Every stage config is a frozen pydantic model whose fields carry a type, a default and a docstring
(`use_attribute_docstrings`), so `rlhfkit config-reference` and the docs are generated from the
classes themselves. Unknown keys are errors (a typo never silently keeps a default), and a
validation error names the file, the dotted field and — for choices — the allowed values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names file and field."""


class Section(BaseModel):
    """Base of every config section: strict keys, immutable after load, docstrings as descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


C = TypeVar("C", bound=Section)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a", "b", "c"], value); the value is parsed as YAML (so `1e-4`, `true`,
    `[1, 2]` and `null` get their natural types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=1e-4)")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    # Parsed as YAML; strings such as "1e-4" (YAML 1.1 wants a dot) are coerced by pydantic's
    # lax mode when the field is a number.
    value = yaml.safe_load(raw) if raw.strip() else ""
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key in a nested dict (copying along the path); intermediate dicts are created."""
    data = dict(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            child = dict(child) if isinstance(child, dict) else {}
            node[key] = child
            node = child
        node[keys[-1]] = value
    return data


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling; see `rlhfkit config-reference`)"
    return f"field '{field}': {message}"


def validate_config(cls: type[C], data: dict[str, Any], source: str) -> C:
    """Validate `data` as `cls`; raise `ConfigError` naming `source` and every bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError("invalid config\n  " + "\n  ".join(lines)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file (and line, for syntax errors)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` laid over `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of every field that has one (nested sections as plain data)."""
    out = {}
    for name, field in cls.model_fields.items():
        if field.is_required():
            continue
        value = field.get_default(call_default_factory=True)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load a stage config: defaults ← YAML file (optional) ← `key=value` overrides, then validate.

    The layers merge key by key, so overriding `run.out_dir` keeps the other `run` fields at the
    stage's own defaults (which may differ from the section class's defaults)."""
    data = deep_merge(_defaults(cls), read_yaml(path) if path is not None else {})
    overrides = list(overrides or [])
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return validate_config(cls, apply_overrides(data, overrides), source)


def config_to_dict(cfg: BaseModel) -> dict[str, Any]:
    """The effective config as plain data (what `config.yaml` in a run directory holds)."""
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
