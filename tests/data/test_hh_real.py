"""The real Anthropic HH-RLHF harmless-base test split (2,312 rows), from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit.data import read_records

HH_TEST = Path("/work/shared/data/hh-rlhf/harmless-base-test.jsonl.gz")


@pytest.mark.real
def test_hh_harmless_test_split_parses_and_reports_the_bad_rows():
    if not HH_TEST.exists():
        pytest.skip(f"HH-RLHF test split not found at {HH_TEST}")
    records, skips = read_records(HH_TEST, "pair", on_error="skip")
    # 2,312 rows: 5 have a further Human/Assistant turn after the shared prompt in one response
    # (rows 1255, 1689, 1951, 1953, 2037), and 4 have an empty chosen answer ("\n\nAssistant: "
    # and nothing after: rows 87, 517, 926, 1104).
    assert len(records) + skips.total == 2312
    assert skips.as_dict()["by_reason"] == {"no_shared_prompt": 5, "empty": 4}
    assert len(records) == 2303
    assert [e.split(":")[-3] for e in skips.examples["empty"]] == ["87", "517", "926"]
    assert all(p.prompt[0].role == "user" and p.prompt[-1].role == "user" for p in records)
