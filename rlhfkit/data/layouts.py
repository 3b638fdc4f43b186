"""The public dataset layouts we accept, and how a row of each becomes one of our records.

A layout is recognised from the first row's keys (or named by the caller) and then applied to
every row of the file. `native` is our own schema, strict: a key that is not a field is an error,
so typos surface. The public layouts keep the columns they do not use under `meta` (the reader
logs which), since public files carry extra columns (scores, sources) worth keeping.

| kind | layout | keys | becomes |
|---|---|---|---|
| any | `native` | the schema's fields | itself |
| prompt | `prompt` | `prompt` (+ extra columns) | prompt |
| prompt | `messages` | `messages` | prompt = all messages |
| sft | `prompt_response` | `prompt`, `response` (+ extra columns) | itself |
| sft | `prompt_completion` | `prompt`, `completion` | response = completion |
| sft | `messages` | `messages` | prompt = all but the last turn, which must be the assistant's |
| pair | `prompt_chosen_rejected` | `prompt`, `chosen`, `rejected` (+ extra columns) | itself |
| pair | `chosen_rejected` | `chosen`, `rejected`, prompt inside both | prompt = shared prefix |
| sft | `chosen_rejected` | `chosen`, `rejected` (e.g. HH-RLHF) | prompt = shared prefix, response = chosen |
| prompt | `chosen_rejected` | `chosen`, `rejected` (e.g. HH-RLHF) | prompt = shared prefix |

Responses (`response`, `completion`, `chosen`, `rejected`) may be strings or chat-message lists
whose last turn is the assistant's; any turns before it must repeat the prompt.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from rlhfkit.data.errors import DataError, from_validation_error
from rlhfkit.data.schemas import RECORD_TYPES, Record

HH_USER = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
"""Turn markers of the Anthropic HH-RLHF transcript form."""
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class Layout:
    """How rows of one public layout map onto a record kind."""

    name: str
    """Layout name, as given to `read_records(layout=...)`."""
    keys: tuple[str, ...]
    """Columns that must all be present; they identify the layout."""
    convert: Callable[[dict[str, Any]], dict[str, Any]]
    """Builds the schema fields that come from `keys` (raises `DataError` on a bad row)."""
    rename: dict[str, str] = field(default_factory=dict)
    """Schema field → input column, so errors name the column the user wrote."""
    strict: bool = False
    """True only for `native`: unknown keys are errors instead of going to `meta`."""


def _as_messages(value: Any) -> list[dict[str, Any]]:
    """A prompt as a list of plain message dicts, for comparing turns."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
            for m in value]


def _assistant_turn(messages: list[Any], column: str) -> Any:
    """The content of the last message, which must be the assistant's (it is the response)."""
    if not messages:
        raise DataError("has no messages", field=column, reason="empty")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise DataError("the last message must be the assistant's", field=column, reason="bad_messages")
    return last.get("content")


def response_text(value: Any, prompt: Any, column: str) -> Any:
    """The assistant text of a response given as a string or as a chat-message list.

    A list's last turn must be the assistant's; turns before it, if any, must equal the prompt
    (some datasets store the whole conversation in `chosen`). Other types pass through for the
    schema to reject, as does a prompt of the wrong type.
    """
    if not isinstance(value, list):
        return value
    text = _assistant_turn(value, column)
    if value[:-1] and isinstance(prompt, (str, list)) and _as_messages(value[:-1]) != _as_messages(prompt):
        raise DataError("the turns before the last one differ from 'prompt'", field=column,
                        reason="bad_messages")
    return text


def hh_to_messages(transcript: str) -> list[dict[str, str]]:
    """`\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:` → user a, assistant b, user c.

    The trailing empty assistant turn (the generation cue) is dropped; contents are stripped.
    """
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise DataError(f"does not start with {HH_USER!r}", field="chosen", reason="bad_transcript")
    turns = [{"role": _HH_ROLE[who], "content": text.strip()}
             for who, text in zip(parts[1::2], parts[2::2])]
    if turns and turns[-1] == {"role": "assistant", "content": ""}:
        turns.pop()
    return turns


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt transcript, chosen response, rejected response) of an HH-RLHF row.

    The prompt is the longest prefix both share that ends at `\\n\\nAssistant:`; what follows must
    be one assistant turn in each, so a further Human/Assistant marker after the cut means the
    shared prompt is not the whole prompt (the row is rejected rather than guessed at).
    """
    cut = os.path.commonprefix([chosen, rejected]).rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"chosen and rejected share no prompt ending in {HH_ASSISTANT!r}",
                        field="chosen", reason="no_shared_prompt")
    cut += len(HH_ASSISTANT)
    for column, text in (("chosen", chosen), ("rejected", rejected)):
        if HH_ASSISTANT in text[cut:] or HH_USER in text[cut:]:
            raise DataError("more turns follow the prompt shared with the other response, so the "
                            "prompt/response split is ambiguous", field=column, reason="no_shared_prompt")
    return chosen[:cut], chosen[cut:].strip(), rejected[cut:].strip()


def _split_message_pair(chosen: list[Any], rejected: list[Any]) -> dict[str, Any]:
    good, bad = _assistant_turn(chosen, "chosen"), _assistant_turn(rejected, "rejected")
    if _as_messages(chosen[:-1]) != _as_messages(rejected[:-1]):
        raise DataError("chosen and rejected differ before their last assistant turn", field="rejected",
                        reason="no_shared_prompt")
    return {"prompt": chosen[:-1], "chosen": good, "rejected": bad}


def _chosen_rejected(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, good, bad = split_hh(chosen, rejected)
        return {"prompt": hh_to_messages(prompt), "chosen": good, "rejected": bad}
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _split_message_pair(chosen, rejected)
    raise DataError(f"must be a string or a message list like 'rejected', got {type(chosen).__name__}",
                    field="chosen", reason="wrong_type")


def _chosen_as_sft(row: dict[str, Any]) -> dict[str, Any]:
    """A preference row as a demonstration: its shared prompt and the chosen response."""
    pair = _chosen_rejected(row)
    return {"prompt": pair["prompt"], "response": pair["chosen"]}


def _message_list(row: dict[str, Any]) -> list[Any]:
    if not isinstance(row["messages"], list):
        raise DataError(f"must be a list of messages, got {type(row['messages']).__name__}",
                        field="messages", reason="wrong_type")
    return row["messages"]


def _sft_messages(row: dict[str, Any]) -> dict[str, Any]:
    messages = _message_list(row)
    return {"prompt": messages[:-1], "response": _assistant_turn(messages, "messages")}


def _responses(*columns: str, source: dict[str, str] | None = None) -> Callable[[dict], dict]:
    """A converter that copies `prompt` and each response column, flattening message lists;
    `source` maps a schema field to the column it is read from (`response` ← `completion`)."""
    source = source or {}

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = {"prompt": row["prompt"]}
        for name in columns:
            column = source.get(name, name)
            out[name] = response_text(row[column], row["prompt"], column)
        return out

    return convert


def _native(kind: str) -> Layout:
    """Our own schema: the row as it is, with message-list responses flattened to their text."""
    columns = {"sft": ("response",), "pair": ("chosen", "rejected")}.get(kind, ())

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for column in columns:
            if column in row and "prompt" in row:
                out[column] = response_text(row[column], row["prompt"], column)
        return out

    return Layout("native", (), convert, strict=True)


LAYOUTS: dict[str, tuple[Layout, ...]] = {
    "prompt": (_native("prompt"), Layout("prompt", ("prompt",), lambda row: {"prompt": row["prompt"]}),
               Layout("messages", ("messages",), lambda row: {"prompt": _message_list(row)},
                      {"prompt": "messages"}),
               Layout("chosen_rejected", ("chosen", "rejected"), lambda row: {"prompt": _chosen_rejected(row)["prompt"]},
                      {"prompt": "chosen"})),
    "sft": (_native("sft"),
            Layout("prompt_completion", ("prompt", "completion"),
                   _responses("response", source={"response": "completion"}), {"response": "completion"}),
            Layout("messages", ("messages",), _sft_messages, {"prompt": "messages", "response": "messages"}),
            Layout("prompt_response", ("prompt", "response"), _responses("response")),
            Layout("chosen_rejected", ("chosen", "rejected"), _chosen_as_sft, {"prompt": "chosen", "response": "chosen"})),
    "candidates": (_native("candidates"),),
    "pair": (_native("pair"),
             Layout("prompt_chosen_rejected", ("prompt", "chosen", "rejected"),
                    _responses("chosen", "rejected")),
             Layout("chosen_rejected", ("chosen", "rejected"), _chosen_rejected, {"prompt": "chosen"})),
    "ranking": (_native("ranking"),),
    "rating": (_native("rating"),),
}
"""Record kind → accepted layouts, in the order detection tries them."""


def schema_for(kind: str) -> type[Record]:
    """The record class of a kind name; the error lists the kinds."""
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown record kind {kind!r}; kinds are: {', '.join(RECORD_TYPES)}")
    return RECORD_TYPES[kind]


def get_layout(kind: str, name: str) -> Layout:
    """The layout called `name` for `kind`; the error lists the accepted ones."""
    schema_for(kind)
    for layout in LAYOUTS[kind]:
        if layout.name == name:
            return layout
    raise ValueError(f"unknown layout {name!r} for kind {kind!r}; accepted: "
                     f"{', '.join(layout.name for layout in LAYOUTS[kind])}")


def _describe(kind: str, layout: Layout) -> str:
    if layout.strict:
        required = [n for n, f in schema_for(kind).model_fields.items() if f.is_required()]
        return f"native ({', '.join(required)}, plus optional schema fields)"
    return f"{layout.name} ({', '.join(layout.keys)})"


def detect_layout(row: dict[str, Any], kind: str) -> str:
    """The name of the layout of `row` (a record of `kind`), judged from its keys.

    `native` when every key is a schema field and the required ones are there; otherwise the
    first public layout whose identifying keys are all present. Raises `DataError` (reason
    `unknown_layout`) listing the keys found and the layouts accepted.
    """
    fields = schema_for(kind).model_fields
    keys = set(row)
    required = {n for n, f in fields.items() if f.is_required()}
    for layout in LAYOUTS[kind]:
        if (required <= keys <= set(fields)) if layout.strict else set(layout.keys) <= keys:
            return layout.name
    accepted = "; ".join(_describe(kind, layout) for layout in LAYOUTS[kind])
    hint = (" A bare 'text' column has no prompt/response boundary: split it into prompt and "
            "response first." if "text" in keys and kind in ("sft", "pair") else "")
    raise DataError(f"unknown layout for kind {kind!r}: keys found {sorted(keys)}; "
                    f"accepted layouts: {accepted}.{hint}", reason="unknown_layout")


def _with_extras(row: dict[str, Any], layout: Layout, built: dict[str, Any], kind: str,
                 moved: set[str] | None) -> dict[str, Any]:
    """Add the row's other columns to what the layout built: schema fields as themselves, anything
    else (or a field the layout already filled) into `meta`, noting the moved names in `moved`."""
    fields = schema_for(kind).model_fields
    extras = {}
    for key, value in row.items():
        if key in layout.keys or key == "meta":
            continue
        if key in fields and key not in built:
            built[key] = value
        else:
            extras[key] = value
    if not extras:
        return {**built, "meta": row["meta"]} if "meta" in row else built
    meta = row.get("meta", {})
    if not isinstance(meta, dict):
        raise DataError(f"must be an object, got {type(meta).__name__}", field="meta", reason="wrong_type")
    clash = sorted(extras.keys() & meta.keys())
    if clash:
        raise DataError(f"column {clash[0]!r} is also a key of 'meta'", field="meta", reason="invalid")
    if moved is not None:
        moved.update(extras)
    return {**built, "meta": {**meta, **extras}}


def parse_row(row: dict[str, Any], kind: str, layout: Layout, moved: set[str] | None = None) -> Record:
    """One input row → a validated record of `kind`, or a `DataError` (file and line not yet set).

    Columns a public layout moves into `meta` are added to `moved`, for the reader to report.
    """
    schema = schema_for(kind)
    for key in layout.keys:
        if key not in row:
            raise DataError("is missing", field=key, reason="missing_field")
    built = layout.convert(row) if layout.strict else _with_extras(row, layout, layout.convert(row),
                                                                   kind, moved)
    try:
        return schema.model_validate(built)
    except ValidationError as exc:
        raise from_validation_error(exc, schema, layout.rename) from None
