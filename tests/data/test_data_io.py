"""Reading and writing records: every kind through every format, atomic writes, format choice."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rlhfkit.data import DataError, RECORD_TYPES, read_records, write_records
from rlhfkit.data.io import detect_format

NAMES = {"jsonl": "recs.jsonl", "jsonl.gz": "recs.jsonl.gz", "json": "recs.json", "json.gz": "recs.json.gz",
         "parquet": "recs.parquet", "datasets": "recs_ds"}


@pytest.mark.parametrize("kind", list(RECORD_TYPES))
@pytest.mark.parametrize("fmt", list(NAMES))
def test_round_trip_every_kind_every_format(tmp_path, samples, kind, fmt):
    path = tmp_path / NAMES[fmt]
    write_records(path, samples[kind])
    records, skips = read_records(path, kind)
    assert records == samples[kind]
    assert skips.total == 0


@pytest.mark.parametrize("fmt", ["parquet", "datasets"])
def test_uniform_columns_are_stored_natively_not_as_json(tmp_path, fmt):
    # All-text prompts and same-keyed meta: other tools should see plain columns, not JSON strings.
    from rlhfkit.data import PreferencePair

    pairs = [PreferencePair(prompt=f"q{i}", chosen="a", rejected="b", meta={"round": i}) for i in range(3)]
    path = tmp_path / NAMES[fmt]
    write_records(path, pairs)
    if fmt == "parquet":
        schema = pq.read_schema(path)
        info = json.loads(schema.metadata[b"rlhfkit"])
        assert (str(schema.field("prompt").type), str(schema.field("meta").type)) == \
            ("string", "struct<round: int64>")
    else:
        info = json.loads((path / "rlhfkit.json").read_text())
    assert info == {"kind": "pair", "json_columns": []}
    assert read_records(path, "pair")[0] == pairs


def test_mixed_prompts_go_to_json_column(tmp_path, samples):
    path = tmp_path / "mixed.parquet"
    write_records(path, samples["pair"])
    assert "prompt" in json.loads(pq.read_schema(path).metadata[b"rlhfkit"])["json_columns"]


def test_jsonl_is_one_full_object_per_line(tmp_path, samples):
    path = write_records(tmp_path / "p.jsonl", samples["rating"])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0]) == samples["rating"][0].model_dump(mode="json")


def test_json_array_is_loadable_by_the_stdlib(tmp_path, samples):
    path = write_records(tmp_path / "p.json", samples["sft"])
    assert json.loads(path.read_text(encoding="utf-8"))[1]["response"] == "Blue — café ☕"


def test_empty_list_round_trips(tmp_path):
    for name in ("e.jsonl", "e.parquet", "e_ds"):
        write_records(tmp_path / name, [], kind="pair")
        records, skips = read_records(tmp_path / name, "pair")
        assert (records, skips.total) == ([], 0)


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path, samples):
    for name in ("a.jsonl", "a.parquet", "a_ds"):
        path = tmp_path / name
        write_records(path, samples["sft"])
        write_records(path, samples["sft"][:1])
        assert read_records(path, "sft")[0] == samples["sft"][:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "a.parquet", "a_ds"]


def test_failed_write_keeps_the_old_file(tmp_path, samples):
    path = tmp_path / "keep.jsonl"
    write_records(path, samples["sft"])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="several kinds"):
        write_records(path, samples["sft"] + samples["pair"])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.jsonl"]


def test_format_from_path_and_override(tmp_path, samples):
    assert [detect_format(tmp_path / n) for n in ("a.JSONL", "a.jsonl.gz", "a.json", "a.parquet", "folder")] == \
        ["jsonl", "jsonl", "json", "parquet", "datasets"]
    with pytest.raises(ValueError, match=r"\.parquet"):
        detect_format(tmp_path / "a.csv")
    path = tmp_path / "pairs.data"
    write_records(path, samples["pair"], format="parquet")
    assert pq.read_table(path).num_rows == 2
    assert read_records(path, "pair", format="parquet")[0] == samples["pair"]


def test_limit_stops_after_that_many_good_records(tmp_path, samples):
    path = write_records(tmp_path / "r.jsonl", samples["ranking"] * 3)
    records, _ = read_records(path, "ranking", limit=4)
    assert records == (samples["ranking"] * 2)


def test_blank_lines_are_not_records_and_do_not_shift_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n   \n{"prompt": "c", "response": ""}\n')
    with pytest.raises(DataError, match=r"gaps\.jsonl:4: field 'response'"):
        read_records(path, "sft")


def test_json_array_errors_give_the_element_line(tmp_path):
    path = tmp_path / "arr.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": "c",\n   "response": 5}\n]\n')
    with pytest.raises(DataError, match=r"arr\.json:3: field 'response': must be a string, got int"):
        read_records(path, "sft")


def test_reading_a_file_of_another_kind_says_so(tmp_path, samples):
    path = write_records(tmp_path / "r.parquet", samples["rating"])
    with pytest.raises(DataError, match=r"r\.parquet: holds 'rating' records, not 'pair'"):
        read_records(path, "pair")


def test_missing_file_and_dataset_dict(tmp_path):
    import datasets

    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_records(tmp_path / "nope.jsonl", "pair")
    table = {"prompt": ["q"], "chosen": ["a"], "rejected": ["b"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: is a DatasetDict with splits \['train'\]"):
        read_records(tmp_path / "dd", "pair")
    records, _ = read_records(tmp_path / "dd" / "train", "pair")
    assert records[0].chosen == "a"


def test_public_parquet_and_datasets_files_are_read(tmp_path):
    # Files written by other tools: no rlhfkit metadata, chat columns as list<struct>.
    import datasets
    import pyarrow as pa

    rows = {"prompt": [[{"role": "user", "content": "hi"}]],
            "chosen": [[{"role": "assistant", "content": "hello"}]],
            "rejected": [[{"role": "assistant", "content": "go"}]], "score_chosen": [8.0]}
    pq.write_table(pa.table(rows), tmp_path / "public.parquet")
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "public_ds"))
    for path in (tmp_path / "public.parquet", tmp_path / "public_ds"):
        (pair,), _ = read_records(path, "pair")
        assert (pair.prompt[0].content, pair.chosen, pair.rejected) == ("hi", "hello", "go")
        assert pair.meta == {"score_chosen": 8.0}
