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


# The package's layers, lowest first: each may import only from itself and the layers before it
# (DESIGN.md, with `tasks` below the stages that score with it and `rundir` below the stages that
# keep a run directory). Lazy imports inside functions count too.
LAYERS = ["algos", "data", "tasks", "config", "models", "rundir", "rollout", "train", "eval", "label"]


def _rlhfkit_imports(path, package: str):
    """(line, top-level rlhfkit module) of every import in `path`; `package` is the file's own
    dotted package, to resolve relative imports."""
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from .x import y / from .. import y
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            parts = base.split(".")
            if parts[0] != "rlhfkit":
                continue
            if len(parts) > 1:
                yield node.lineno, parts[1]
            else:  # from rlhfkit import train
                yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("rlhfkit."))


def test_no_layer_imports_a_later_layer():
    from pathlib import Path

    import rlhfkit

    root = Path(rlhfkit.__file__).parent
    offences = []
    for path in root.rglob("*.py"):
        layer = path.relative_to(root).parts[0].removesuffix(".py")
        if layer not in LAYERS:  # cli.py and demo.py sit on top of everything
            continue
        package = ".".join(("rlhfkit", *path.relative_to(root).parts[:-1]))
        for line, imported in _rlhfkit_imports(path, package):
            if imported in LAYERS and LAYERS.index(imported) > LAYERS.index(layer):
                offences.append(f"{path.relative_to(root)}:{line} imports rlhfkit.{imported}")
    assert not offences, offences
