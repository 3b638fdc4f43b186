"""Task kinds, the vote payload an annotator sends, and its translation to canonical form.

Annotators only ever see *display positions* (Response 1 … K, 1-based). The server stores the
order it showed (`display_order[p]` = canonical candidate index shown at position p+1) and turns
the shown answer into a *canonical* answer over the task's candidates in data order, so votes
from annotators who saw different orders are comparable. Canonical answers:

- pairwise / ab_eval: `{"winner": 0 | 1 | None, "tie": bool, "both_bad": bool,
  "strength": 0..3 | None, "first_shown_won": bool | None}`
- ranking: `{"ranks": [rank of candidate c, 1 = best, ties share a rank] | None,
  "not_rankable": bool}` (competition ranking: rank = 1 + number of candidates ranked above)
- rating: `{"rating": 1..5}`
- bws: `{"best": c, "worst": c}`
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Kind = Literal["pairwise", "ranking", "rating", "bws", "ab_eval"]
KINDS: tuple[str, ...] = ("pairwise", "ranking", "rating", "bws", "ab_eval")
PAIR_KINDS = ("pairwise", "ab_eval")
MAX_K = 9
"""Most candidates shown in one task (digits 1–9 on the keyboard)."""
BWS_MIN_K = 4
MAX_CRITIQUE_CHARS = 4_000
MAX_EDIT_CHARS = 12_000
"""Edited-response cap (FastChat's input limit); critique cap is a few paragraphs."""
MAX_SKIP_REASON_CHARS = 500
STRENGTH_LEVELS = ("negligibly better / unsure", "slightly better", "better", "significantly better")
"""Llama 2's four preference-strength levels, index 0..3 (Touvron et al. 2023, §3.2.1)."""


def _storable(text: str) -> str:
    # NUL is refused by PostgreSQL text columns and a lone surrogate cannot be encoded as UTF-8:
    # either would otherwise surface as a database error (500) instead of a clear 422.
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("must be valid Unicode (no lone surrogates)") from err
    return text


StorableText = Annotated[str, AfterValidator(_storable)]


def _not_blank(text: str) -> str:
    # A whitespace-only critique, edit or skip reason carries nothing; stored, a blank edit would
    # become an invalid `chosen` at export. Refused here so the client learns it (422) at once.
    if not text.strip():
        raise ValueError("must not be blank (leave the field out instead)")
    return text


NonBlankText = Annotated[StorableText, AfterValidator(_not_blank),
                         Field(json_schema_extra={"pattern": r"\S"})]
"""Storable text with more than whitespace (critique, edited response, skip reason). The schema says so too
(`\\S` is `not str.isspace()` in Python's `re`), so schema-driven clients and fuzzers know."""


class AnswerError(ValueError):
    """A vote that does not fit its task (reported to the client as 422)."""


class VoteIn(BaseModel):
    """What the annotator page posts for one task. Only the fields of the task's kind are set."""

    model_config = ConfigDict(extra="forbid")

    choice: Literal["1", "2", "tie", "both_bad"] | None = None
    """Pairwise: the shown position preferred, or a tie, or both bad."""
    strength: int | None = Field(None, ge=0, le=len(STRENGTH_LEVELS) - 1)
    """Pairwise: how strong the preference is (index into STRENGTH_LEVELS)."""
    ranking: list[list[int]] | None = Field(None, max_length=MAX_K)
    """Ranking: groups of shown positions, best group first; a group of several is a tie."""
    not_rankable: bool = False
    """Ranking: the responses cannot be ranked (all equally good or bad, or off-topic)."""
    rating: int | None = Field(None, ge=1, le=5)
    """Rating: 1 (worst) to 5 (best)."""
    best: int | None = Field(None, ge=1, le=MAX_K)
    """Best–worst: shown position of the best response."""
    worst: int | None = Field(None, ge=1, le=MAX_K)
    """Best–worst: shown position of the worst response."""
    critique: NonBlankText | None = Field(None, max_length=MAX_CRITIQUE_CHARS)
    """Optional free-text critique."""
    edited: NonBlankText | None = Field(None, max_length=MAX_EDIT_CHARS)
    """Optional edited (improved) version of the response(s) put first: the preferred one, the
    best-ranked, the best, the rated one; on a tie, both-bad or not-rankable answer, all shown."""
    elapsed_ms: int | None = Field(None, ge=0, le=86_400_000)
    """Time the annotator spent on the task, measured by the page."""


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: NonBlankText = Field(max_length=MAX_SKIP_REASON_CHARS)
    """Why the task was skipped (free text)."""


_FIELDS_OF: dict[str, set[str]] = {
    "pairwise": {"choice", "strength"},
    "ab_eval": {"choice", "strength"},
    "ranking": {"ranking", "not_rankable"},
    "rating": {"rating"},
    "bws": {"best", "worst"},
}
_ANSWER_FIELDS = {"choice", "strength", "ranking", "not_rankable", "rating", "best", "worst"}


def _check_fields(kind: str, vote: VoteIn) -> None:
    given = {f for f in vote.model_fields_set if f in _ANSWER_FIELDS}
    if not vote.not_rankable:  # an explicit `false` is harmless on any kind
        given.discard("not_rankable")
    wrong = given - _FIELDS_OF[kind]
    if wrong:
        raise AnswerError(f"field(s) {sorted(wrong)} do not apply to a {kind} task")


def canonical_answer(kind: str, vote: VoteIn, display_order: list[int],
                     with_strength: bool = True) -> dict[str, Any]:
    """Validate `vote` against the task and map shown positions to canonical candidates.
    `with_strength`: the project asks for a strength level (without it `strength` is refused)."""
    _check_fields(kind, vote)
    k = len(display_order)
    if kind in PAIR_KINDS:
        if vote.strength is not None and not with_strength:
            raise AnswerError("this project does not collect `strength`; leave it out")
        return _pair_answer(vote, display_order)
    if kind == "ranking":
        return _ranking_answer(vote, k, display_order)
    if kind == "rating":
        if vote.rating is None:
            raise AnswerError("a rating task needs `rating` (1–5)")
        return {"rating": vote.rating}
    return _bws_answer(vote, k, display_order)


def _pair_answer(vote: VoteIn, order: list[int]) -> dict[str, Any]:
    if vote.choice is None:
        raise AnswerError("a pairwise task needs `choice`: '1', '2', 'tie' or 'both_bad'")
    decisive = vote.choice in ("1", "2")
    if vote.strength is not None and not decisive:
        raise AnswerError("`strength` applies only to a choice of '1' or '2'")
    winner = order[int(vote.choice) - 1] if decisive else None
    return {"winner": winner, "tie": vote.choice == "tie", "both_bad": vote.choice == "both_bad",
            "strength": vote.strength, "first_shown_won": vote.choice == "1" if decisive else None}


def _ranking_answer(vote: VoteIn, k: int, order: list[int]) -> dict[str, Any]:
    if vote.not_rankable:
        if vote.ranking is not None:
            raise AnswerError("give either `ranking` or `not_rankable`, not both")
        return {"ranks": None, "not_rankable": True}
    if not vote.ranking:
        raise AnswerError("a ranking task needs `ranking` (groups of positions) or `not_rankable`")
    flat = [p for group in vote.ranking for p in group]
    if any(not group for group in vote.ranking):
        raise AnswerError("`ranking` has an empty group")
    if sorted(flat) != list(range(1, k + 1)):
        raise AnswerError(f"`ranking` must contain each position 1..{k} exactly once, got {flat}")
    ranks = [0] * k
    above = 0
    for group in vote.ranking:
        for p in group:
            ranks[order[p - 1]] = above + 1
        above += len(group)
    return {"ranks": ranks, "not_rankable": False}


def _bws_answer(vote: VoteIn, k: int, order: list[int]) -> dict[str, Any]:
    if vote.best is None or vote.worst is None:
        raise AnswerError("a best–worst task needs `best` and `worst` positions")
    if vote.best > k or vote.worst > k:
        raise AnswerError(f"positions must lie in 1..{k}")
    if vote.best == vote.worst:
        raise AnswerError("`best` and `worst` must differ")
    return {"best": order[vote.best - 1], "worst": order[vote.worst - 1]}


def gold_answer(kind: str, scores: list[float]) -> dict[str, Any]:
    """The known answer of a task whose candidates have gold `scores` (higher = better)."""
    if kind in PAIR_KINDS:
        a, b = scores
        return {"winner": None if a == b else int(b > a), "tie": a == b}
    if kind == "ranking":
        return {"ranks": [1 + sum(o > s for o in scores) for s in scores]}
    if kind == "rating":
        return {"rating": int(scores[0])}
    return {"best": max(range(len(scores)), key=scores.__getitem__),
            "worst": min(range(len(scores)), key=scores.__getitem__)}


def gold_score(kind: str, answer: dict[str, Any], gold: dict[str, Any]) -> float | None:
    """Credit in [0, 1] for `answer` against `gold`; None when the answer abstains.

    pairwise: 1 if the winner (or tie) matches; ranking: share of candidate pairs ordered as
    gold (gold ties ignored); rating: 1 if equal; bws: mean of best-correct and worst-correct.
    """
    if kind in PAIR_KINDS:
        if answer["both_bad"]:
            return None
        return float(answer["winner"] == gold["winner"] and answer["tie"] == gold["tie"])
    if kind == "ranking":
        if answer["ranks"] is None:
            return None
        r, g = answer["ranks"], gold["ranks"]
        pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g)) if g[i] != g[j]]
        if not pairs:
            return None
        return sum((r[i] < r[j]) == (g[i] < g[j]) and r[i] != r[j] for i, j in pairs) / len(pairs)
    if kind == "rating":
        return float(answer["rating"] == gold["rating"])
    return ((answer["best"] == gold["best"]) + (answer["worst"] == gold["worst"])) / 2
