"""STYLE rule 12 and the layer rule: the math and the configs import without the heavy stack."""

import subprocess
import sys

BLOCK = "import sys\nfor m in ('transformers', 'accelerate', 'peft', 'datasets'):\n    sys.modules[m] = None\n"


def _imports_cleanly(module: str) -> None:
    code = BLOCK + f"import {module}\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_algos_import_without_transformers():
    _imports_cleanly("rlhfkit.algos")


def test_configs_import_without_transformers():
    _imports_cleanly("rlhfkit.config.reference")
    _imports_cleanly("rlhfkit.config.sft")


def test_cli_help_is_light():
    _imports_cleanly("rlhfkit.cli")
