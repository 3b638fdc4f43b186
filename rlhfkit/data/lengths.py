"""Dropping (or refusing) records too long for the model, with the tokenizer passed in.

The count comes from a callable, `tokenizer_fn(prompt, response) -> int`: the number of tokens
of the prompt followed by the response (`response=None`: the prompt alone). The caller builds it
from whatever tokenizer and chat template the model uses (see `rlhfkit.data.chat` for the plain
rendering), so this module needs no transformers.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Literal

from rlhfkit.data.errors import DataError, SkipReport
from rlhfkit.data.schemas import CandidateSet, PreferencePair, Prompt, Ranking, Record

TokenizerFn = Callable[[Prompt, "str | None"], int]
"""(prompt, response or None) → number of tokens of the rendered prompt + response."""


def _responses(record: Record) -> Iterator[tuple[str, str]]:
    """(field path, response text) of every response the record holds."""
    if isinstance(record, PreferencePair):
        yield from (("chosen", record.chosen), ("rejected", record.rejected))
    elif isinstance(record, Ranking):
        yield from ((f"responses.{i}", r) for i, r in enumerate(record.responses))
    elif isinstance(record, CandidateSet):
        yield from ((f"candidates.{i}.text", c.text) for i, c in enumerate(record.candidates))
    elif hasattr(record, "response"):
        yield "response", record.response


def token_length_error(record: Record, tokenizer_fn: TokenizerFn, max_tokens: int,
                       max_prompt_tokens: int | None = None) -> DataError | None:
    """The first length problem of one record, or None.

    The prompt alone must fit in `max_prompt_tokens` (when given; for prompt records, in
    `max_tokens` otherwise) and the prompt plus each response in `max_tokens`.
    """
    responses = list(_responses(record))
    prompt_limit = max_prompt_tokens if max_prompt_tokens is not None else (None if responses else max_tokens)
    if prompt_limit is not None:
        n = tokenizer_fn(record.prompt, None)
        if n > prompt_limit:
            return DataError(f"the prompt is {n} tokens, over the limit of {prompt_limit}",
                             field="prompt", reason="too_long")
    for path, response in responses:
        n = tokenizer_fn(record.prompt, response)
        if n > max_tokens:
            return DataError(f"prompt + response is {n} tokens, over the limit of {max_tokens}",
                             field=path, reason="too_long")
    return None


def check_token_lengths(records: Iterable[Record], tokenizer_fn: TokenizerFn, max_tokens: int, *,
                        max_prompt_tokens: int | None = None, source: str = "records",
                        on_error: Literal["raise", "skip"] = "raise",
                        skips: SkipReport | None = None) -> tuple[list[Record], SkipReport]:
    """(records that fit, report of those skipped as `too_long`).

    Errors are located as `source:N`, N the 1-based position in `records`; to get file lines
    instead, pass the limits to `read_records`, which runs the same check while reading. With
    `on_error="raise"` the first long record raises `DataError`; `skips` (if given) is added to
    and returned.
    """
    skips = SkipReport() if skips is None else skips
    kept = []
    for position, record in enumerate(records, start=1):
        error = token_length_error(record, tokenizer_fn, max_tokens, max_prompt_tokens)
        if error is None:
            kept.append(record)
        elif on_error == "raise":
            raise error.at(source, position)
        else:
            skips.add(error.at(source, position))
    return kept, skips
