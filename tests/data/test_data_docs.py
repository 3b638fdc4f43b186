"""docs/data.md stays in step with the code: every schema field and every layout is described."""

from __future__ import annotations

from pathlib import Path

from rlhfkit.data import LAYOUTS, RECORD_TYPES
from rlhfkit.data.schemas import Candidate, Message, Provenance

DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_every_schema_field_has_a_table_row():
    text = DOC.read_text(encoding="utf-8")
    for schema in (Message, Provenance, Candidate, *RECORD_TYPES.values()):
        for name in schema.model_fields:
            assert f"| `{name}` |" in text, f"{schema.__name__}.{name} missing from {DOC}"


def test_every_layout_is_listed():
    text = DOC.read_text(encoding="utf-8")
    for kind, layouts in LAYOUTS.items():
        for layout in layouts:
            assert f"`{layout.name}`" in text, f"layout {layout.name} ({kind}) missing from {DOC}"
