"""Typed configs: YAML + overrides, errors that name the file and field, every recipe valid."""

from pathlib import Path

import pytest

from rlhfkit.config.base import ConfigError, apply_overrides, load_config, parse_override
from rlhfkit.config.reference import render_reference, stage_configs
from rlhfkit.config.sft import SFTConfig

REPO = Path(__file__).resolve().parents[2]


def test_override_types_and_nesting():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], "1e-4")
    assert parse_override("run.progress=false") == (["run", "progress"], False)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2", "d=[1, 2]"]) == {"a": {"b": 1, "c": 2}, "d": [1, 2]}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("optim:\n  lr: 0.01\nbatch_size: 16\n")
    cfg = load_config(SFTConfig, path, ["optim.lr=1e-4", "micro_batch_size=8"])
    assert cfg.optim.lr == pytest.approx(1e-4)  # lax mode turns the YAML string "1e-4" into a float
    assert (cfg.batch_size, cfg.micro_batch_size) == (16, 8)


def test_error_names_file_field_and_allowed_values(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  tiny:\n    arch: gpt3\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, path)
    text = str(err.value)
    assert str(path) in text and "model.tiny.arch" in text and "'llama'" in text and "'gpt2'" in text


def test_unknown_field_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="optim.learning_rate.*unknown field"):
        load_config(SFTConfig, None, ["optim.learning_rate=1"])


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(SFTConfig, path)


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_validates(recipe):
    stage = recipe.name.split(".")[0].split("-")[0].split("_")[0]
    classes = stage_configs()
    assert stage in classes, f"{recipe.name}: recipe names start with a stage name ({sorted(classes)})"
    load_config(classes[stage], recipe)


def test_config_reference_is_current():
    doc = REPO / "docs" / "config-reference.md"
    assert doc.read_text() == render_reference(), "regenerate with: rlhfkit config-reference > docs/config-reference.md"


def test_every_field_is_documented():
    def walk(cls, prefix=""):
        for name, field in cls.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                yield from walk(sub, prefix + name + ".")
            else:
                yield prefix + name, field.description

    missing = [f"{stage}:{key}" for stage, cls in stage_configs().items() for key, doc in walk(cls) if not doc]
    assert not missing, f"fields without a docstring: {missing}"


def test_override_keeps_the_stage_defaults_of_its_section():
    # SFTConfig's own run defaults (out_dir=runs/sft) survive an override of another run field.
    cfg = load_config(SFTConfig, None, ["run.seed=3"])
    assert (cfg.run.seed, cfg.run.out_dir) == (3, "runs/sft")


def test_sft_sequence_length_is_checked_against_a_tiny_model_at_load():
    with pytest.raises(ConfigError, match="data.max_seq_len 500 exceeds the tiny model's model.tiny.max_positions 128"):
        load_config(SFTConfig, None, ["data.max_seq_len=500"])
    load_config(SFTConfig, None, ["model.path=some/model", "data.max_seq_len=500"])  # a real model: its own limit


@pytest.mark.parametrize("temperatures", ["[0.7,0.7]", "[0,1.0]"])
def test_demo_variant_temperatures_must_be_distinct_and_positive(temperatures):
    from rlhfkit.config.demo import DemoConfig

    with pytest.raises(ConfigError, match="two distinct positive values"):
        load_config(DemoConfig, None, [f"sampling.temperatures={temperatures}"])



def test_rm_sequence_length_is_checked_against_a_tiny_model_at_load():
    from rlhfkit.config.rm import RMConfig

    with pytest.raises(ConfigError, match="model.max_length 200 exceeds the tiny model's model.tiny.max_positions 128"):
        load_config(RMConfig, None, ["model.max_length=200"])
    assert load_config(RMConfig, None, ["model.max_length=100"]).model.max_length == 100
    assert load_config(RMConfig).model.max_length is None  # the default: the tiny model's max_positions
    load_config(RMConfig, None, ["model.path=some/model", "model.max_length=2048"])  # a real model: its own limit
