"""Record schemas shared by every stage: prompts, SFT examples, candidates, preferences.

One record = one JSON object (one JSONL line, one Parquet/`datasets` row). Validation is done by
pydantic; the readers in `rlhfkit.data.io` turn a `ValidationError` into a `DataError` that names
the file, the line and the field. A prompt is either plain text or a chat transcript
(`list[Message]`); a response is always the assistant's text.

Our own checks raise `PydanticCustomError` with a short error type (`empty`, `identical`,
`repeated_response`, `wrong_length`, `out_of_range`), which becomes the reason a skipped record is
counted under, and each is attached to the field at fault.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

Role = Literal["system", "user", "assistant"]

MIN_RANKED = 2
MAX_RANKED = 9
RATING_MIN = 1
RATING_MAX = 5


class Record(BaseModel):
    """Base of every record: unknown keys are errors, so typos never vanish silently."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Message(Record):
    role: Role
    """Who speaks: `system`, `user` or `assistant`."""
    content: str
    """The text of the turn."""


def _nonempty(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("empty", "must not be empty")
    return text


def _check_prompt(prompt: "str | list[Message]") -> "str | list[Message]":
    if isinstance(prompt, str):
        return _nonempty(prompt)
    if not prompt:
        raise PydanticCustomError("empty", "has no messages")
    return prompt


Text = Annotated[str, AfterValidator(_nonempty)]
"""A string that must contain more than whitespace."""

Prompt = Annotated[Union[str, list[Message]], AfterValidator(_check_prompt)]
"""A prompt: plain text, or a chat transcript (non-empty either way)."""


class Provenance(BaseModel):
    """Where a response came from. Extra keys are kept (free-form sampling details)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    model: str | None = None
    """Name or path of the model variant that produced the response."""
    checkpoint: str | None = None
    """Checkpoint (path or step) of that model."""
    temperature: float | None = None
    """Sampling temperature used."""
    top_p: float | None = None
    """Nucleus sampling threshold used."""
    top_k: int | None = None
    """Top-k used (0 = full vocabulary)."""
    seed: int | None = None
    """Sampling seed."""
    max_new_tokens: int | None = None
    """Generation length limit."""


class PromptRecord(Record):
    prompt: Prompt
    """The prompt text or chat transcript."""
    id: str | None = None
    """Stable identifier of the prompt (kept through sampling, labelling and export)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata (task parameters, source)."""


class SFTExample(Record):
    prompt: Prompt
    """The prompt text or chat transcript."""
    response: Text
    """The demonstration (assistant text) the model should learn to produce."""
    id: str | None = None
    """Optional identifier."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata."""


class Candidate(Record):
    text: Text
    """The response text (without the EOS token)."""
    finished: bool = True
    """True when generation stopped at EOS (False = truncated at the length limit)."""
    provenance: Provenance = Field(default_factory=Provenance)
    """Which model / checkpoint / sampling settings produced it."""


class CandidateSet(Record):
    """K responses to one prompt: the output of `rlhfkit sample`, the input of labelling."""

    prompt_id: str
    """Identifier of the prompt."""
    prompt: Prompt
    """The prompt text or chat transcript."""
    candidates: list[Candidate]
    """The distinct responses (duplicates removed at sampling time)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata (task parameters)."""


class PreferencePair(Record):
    prompt: Prompt
    """The prompt text or chat transcript."""
    chosen: Text
    """The preferred response."""
    rejected: Text
    """The other response."""
    margin: float | None = None
    """Required reward gap m in −log σ(r_c − r_r − m) (from strength, rating gap or vote share)."""
    strength: int | None = None
    """Preference strength level (0 = negligible … 3 = significant), if collected."""
    tie: bool = False
    """Both responses judged equal (chosen/rejected order is then arbitrary)."""
    annotator: str | None = None
    """Pseudonymous id of the annotator or judge."""
    prompt_id: str | None = None
    """Identifier of the prompt."""
    chosen_provenance: Provenance | None = None
    """Provenance of the chosen response."""
    rejected_provenance: Provenance | None = None
    """Provenance of the rejected response."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata (shown order, votes, …)."""

    @field_validator("rejected")
    @classmethod
    def _distinct(cls, rejected: str, info: ValidationInfo) -> str:
        # A field validator (not a model one) so the error points at `rejected`.
        if info.data.get("chosen") == rejected:
            raise PydanticCustomError("identical", "chosen and rejected are identical")
        return rejected


class Ranking(Record):
    """A K-way ranking (2 ≤ K ≤ 9). `ranks[i]` is the rank of `responses[i]`: 1 = best; equal
    ranks are ties."""

    prompt: Prompt
    """The prompt text or chat transcript."""
    responses: list[Text] = Field(min_length=MIN_RANKED, max_length=MAX_RANKED)
    """The ranked responses (distinct)."""
    ranks: list[int]
    """Rank of each response, 1 = best; ties share a rank."""
    annotator: str | None = None
    """Pseudonymous id of the annotator or judge."""
    prompt_id: str | None = None
    """Identifier of the prompt."""
    provenance: list[Provenance] | None = None
    """Provenance of each response, aligned with `responses`."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata (shown order, …)."""

    @field_validator("responses")
    @classmethod
    def _distinct_nonempty(cls, responses: list[str]) -> list[str]:
        first_seen: dict[str, int] = {}
        for i, text in enumerate(responses):
            if text in first_seen:
                raise PydanticCustomError(
                    "repeated_response", "a response appears twice in the ranking (responses.{a} and "
                    "responses.{b})", {"a": first_seen[text], "b": i})
            first_seen[text] = i
        return responses

    # Field validators below see `responses` in `info.data` only when it validated (it is declared
    # first); otherwise its own error is already reported.
    @field_validator("ranks")
    @classmethod
    def _ranks_fit(cls, ranks: list[int], info: ValidationInfo) -> list[int]:
        n = len(info.data.get("responses", ranks))
        if len(ranks) != n:
            raise PydanticCustomError(
                "wrong_length", "{k} ranks for {n} responses", {"k": len(ranks), "n": n})
        if any(r < 1 or r > n for r in ranks):
            raise PydanticCustomError("out_of_range", "ranks must lie in 1..{n}", {"n": n})
        return ranks

    @field_validator("provenance")
    @classmethod
    def _provenance_fits(
        cls, provenance: list[Provenance] | None, info: ValidationInfo
    ) -> list[Provenance] | None:
        responses = info.data.get("responses")
        if provenance is not None and responses is not None and len(provenance) != len(responses):
            raise PydanticCustomError("wrong_length", "provenance must have one entry per response")
        return provenance


class Rating(Record):
    prompt: Prompt
    """The prompt text or chat transcript."""
    response: Text
    """The rated response."""
    rating: int = Field(ge=RATING_MIN, le=RATING_MAX)
    """Likert score, 1 (worst) to 5 (best)."""
    annotator: str | None = None
    """Pseudonymous id of the annotator or judge."""
    prompt_id: str | None = None
    """Identifier of the prompt."""
    provenance: Provenance | None = None
    """Provenance of the response."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """Free-form metadata."""


RECORD_TYPES: dict[str, type[Record]] = {
    "prompt": PromptRecord,
    "sft": SFTExample,
    "candidates": CandidateSet,
    "pair": PreferencePair,
    "ranking": Ranking,
    "rating": Rating,
}
"""Record kind name → schema, as used by readers and configs."""
