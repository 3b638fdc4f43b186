"""Bad input: every error names file, line (or row) and field; skip mode counts by reason."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data import DataError, PreferencePair, SkipReport, read_records
from rlhfkit.data.errors import from_validation_error

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}


def _write_lines(tmp_path, lines, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _bad_at_line_3(tmp_path, kind_row, name="pairs.jsonl"):
    good = json.dumps(kind_row[1])
    bad = kind_row[2] if isinstance(kind_row[2], str) else json.dumps(kind_row[2])
    return _write_lines(tmp_path, [good, good, bad], name)


RATING = {"prompt": "q", "response": "a", "rating": 3}
RANKING = {"prompt": "q", "responses": ["a", "b"], "ranks": [1, 2]}
CASES = {
    "malformed_json": (("pair", GOOD, '{"prompt": "q", "chosen": "a",, }'), None, "malformed JSON"),
    "not_an_object": (("pair", GOOD, '["q", "a", "b"]'), None, "expected a JSON object, got list"),
    "missing": (("pair", GOOD, {"prompt": "q", "chosen": "a"}), "rejected", "is missing"),
    "empty": (("pair", GOOD, {"prompt": "q", "chosen": " \n", "rejected": "b"}), "chosen", "must not be empty"),
    "empty_prompt": (("pair", GOOD, {"prompt": [], "chosen": "a", "rejected": "b"}), "prompt", "has no messages"),
    "wrong_type": (("rating", RATING, {**RATING, "rating": "high"}), "rating", "must be an integer, got str"),
    "wrong_type_union": (("pair", GOOD, {**GOOD, "prompt": 5}), "prompt", "must be a string or a list, got int"),
    "nested": (("pair", GOOD, {**GOOD, "prompt": [{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}]}),
               "prompt.1.role", "must be one of 'system', 'user' or 'assistant', got 'bot'"),
    "identical": (("pair", GOOD, {**GOOD, "rejected": "a"}), "rejected", "chosen and rejected are identical"),
    "repeated": (("ranking", RANKING, {**RANKING, "responses": ["a", "b", "a"], "ranks": [1, 2, 3]}),
                 "responses", r"a response appears twice in the ranking \(responses\.0 and responses\.2\)"),
    "ranks": (("ranking", RANKING, {**RANKING, "ranks": [1, 3]}), "ranks", r"ranks must lie in 1\.\.2"),
    "rating_high": (("rating", RATING, {**RATING, "rating": 6}), "rating", "must be between 1 and 5, got 6"),
    "rating_low": (("rating", RATING, {**RATING, "rating": 0}), "rating", "must be between 1 and 5, got 0"),
    "candidate": (("candidates", {"prompt_id": "1", "prompt": "q", "candidates": [{"text": "a"}]},
                   {"prompt_id": "1", "prompt": "q", "candidates": [{"text": "a"}, {"text": ""}]}),
                  "candidates.1.text", "must not be empty"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_names_file_line_and_field(tmp_path, case):
    (kind, good, bad), field, problem = CASES[case]
    path = _bad_at_line_3(tmp_path, (kind, good, bad))
    where = rf"{path}:3: " + (rf"field '{field}': " if field else "")
    with pytest.raises(DataError, match="^" + where + problem):
        read_records(path, kind)


@pytest.mark.parametrize("case", ["missing", "empty", "identical", "rating_high", "nested"])
def test_parquet_and_datasets_errors_give_the_row(tmp_path, case):
    import datasets

    (kind, good, bad), field, problem = CASES[case]
    rows = [good, good, bad]
    # Other tools write the column as they like; here a JSON string keeps mixed rows storable.
    columns = {key: [json.dumps(r.get(key)) if key == "prompt" else r.get(key) for r in rows]
               for key in dict.fromkeys(k for r in rows for k in r)}
    table = pa.table(columns).replace_schema_metadata({"rlhfkit": json.dumps({"json_columns": ["prompt"]})})
    pq.write_table(table, tmp_path / "rows.parquet")
    datasets.Dataset(pa.table(columns)).save_to_disk(str(tmp_path / "rows_ds"))
    (tmp_path / "rows_ds" / "rlhfkit.json").write_text(json.dumps({"json_columns": ["prompt"]}))
    # A key absent from one JSON row is a null in a column.
    problem = "is null" if case == "missing" else problem
    for path in (tmp_path / "rows.parquet", tmp_path / "rows_ds"):
        with pytest.raises(DataError, match=rf"^{path}:3: field '{field}': {problem}"):
            read_records(path, kind)


def test_skip_mode_counts_by_reason_with_located_examples(tmp_path):
    lines = [json.dumps(GOOD), "{oops", json.dumps({"prompt": "q", "chosen": "", "rejected": "b"}),
             json.dumps({**GOOD, "rejected": "a"}), json.dumps({"prompt": "q", "chosen": "", "rejected": ""}),
             json.dumps({"prompt": "q", "chosen": "a"}), json.dumps({**GOOD, "chosen": "c"})]
    path = _write_lines(tmp_path, lines)
    records, skips = read_records(path, "pair", on_error="skip")
    assert [r.chosen for r in records] == ["a", "c"]
    assert skips.total == 5
    assert skips.as_dict()["by_reason"] == {"empty": 2, "identical": 1, "malformed_json": 1, "missing_field": 1}
    assert skips.as_dict()["examples"]["empty"] == [
        f"{path}:3: field 'chosen': must not be empty",
        f"{path}:5: field 'chosen': must not be empty (also: 'rejected')"]
    assert str(skips) == "5 records skipped (empty: 2, identical: 1, malformed_json: 1, missing_field: 1)"


def test_skip_report_keeps_three_examples_and_merges():
    first, second = SkipReport(), SkipReport()
    for line in range(1, 6):
        first.add(DataError("must not be empty", field="chosen", reason="empty", file="f.jsonl", line=line))
    second.count("tie", "ranking 1: tie")
    second.count("empty", "g.jsonl:9: field 'chosen': must not be empty")
    first.merge(second)
    assert first.total == 7
    assert first.as_dict() == {
        "total": 7, "by_reason": {"empty": 6, "tie": 1},
        "examples": {"empty": [f"f.jsonl:{n}: field 'chosen': must not be empty" for n in (1, 2, 3)],
                     "tie": ["ranking 1: tie"]}}
    assert str(SkipReport()) == "no records skipped"


def test_data_error_is_a_value_error_and_formats_without_location():
    err = DataError("must not be empty", field="chosen", reason="empty")
    assert isinstance(err, ValueError)
    assert str(err) == "field 'chosen': must not be empty"
    assert str(err.at("data/pairs.jsonl", 17)) == "data/pairs.jsonl:17: field 'chosen': must not be empty"
    assert err.at("data/pairs.jsonl", 17).reason == "empty"


def test_validation_error_paths_are_dotted_and_renamed():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        PreferencePair.model_validate({"prompt": [{"role": "user", "content": 3}], "chosen": "a"})
    error = from_validation_error(info.value, PreferencePair, rename={"prompt": "messages"})
    assert (error.field, error.reason) == ("messages.0.content", "wrong_type")
    assert str(error) == "field 'messages.0.content': must be a string, got int (also: 'rejected')"


def test_on_error_must_be_raise_or_skip(tmp_path):
    path = _write_lines(tmp_path, [json.dumps(GOOD)])
    with pytest.raises(ValueError, match="on_error must be one of"):
        read_records(path, "pair", on_error="ignore")
    with pytest.raises(ValueError, match="unknown record kind 'pairs'; kinds are: prompt, sft"):
        read_records(path, "pairs")
