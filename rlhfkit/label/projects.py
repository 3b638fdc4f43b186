"""Admin side of the store: projects, batches of candidate sets, annotators, tokens, the audit log.

Everything here is also reachable from the CLI (`rlhfkit annotate …`). Imports go through this
Python API, never through an HTTP upload.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import JSON, Connection, Engine, bindparam, func, insert, select, update

from rlhfkit.data.schemas import CandidateSet
from rlhfkit.label import store
from rlhfkit.label.prepared import Prepared
from rlhfkit.label.answers import BWS_MIN_K, KINDS, MAX_K, gold_answer

RATING_SCALE = range(1, 6)
"""Ratings an annotator can give (answers.VoteIn.rating); a rating gold value must be one."""

ADMIN_TOKEN_KEY = "admin_token_sha256"
MAX_RESPONSE_CHARS = 100_000
"""Longest candidate text accepted at import (keeps pages and request bodies bounded)."""
UNLIMITED_OVERLAP = 2**31 - 1
"""Overlap of gold tasks: every annotator may be served each gold item once."""
DEFAULT_STRENGTH_MARGINS = (0.0, 1 / 3, 2 / 3, 1.0)
"""RM margin m per strength level 0..3 (Llama 2 uses a margin growing with the stated strength)."""
DEFAULT_ASSIGNMENT_TTL_MINUTES = 30.0
"""Lease of a task handed to an annotator: long enough to read two long answers and write a
critique (~5 min, docs/annotation.md), short enough that an abandoned tab frees its slot soon."""


class ProjectError(ValueError):
    """A project request that cannot be carried out (bad name, kind, candidates or settings)."""


class NotFoundError(ProjectError):
    """No project, or no annotator, of that name."""


class ConflictError(ProjectError):
    """A project or annotator of that name exists already."""


@dataclass(frozen=True)
class ProjectSettings:
    """Per-project settings, stored as JSON on the project row."""

    overlap: int = 1
    """Annotations wanted per task (distinct annotators)."""
    gold_share: float = 0.0
    """Share of each annotator's items drawn from gold tasks (items whose `meta['gold']` holds
    known per-candidate scores). Gold items look like any other and give no feedback."""
    repeat_share: float = 0.0
    """Probability that a voted task is shown again later to the same annotator, order swapped."""
    repeat_gap: int = 5
    """A repeat comes at least this many items after the original."""
    with_strength: bool = True
    """Pairwise: ask for a strength level after the choice."""
    strength_margins: tuple[float, ...] = DEFAULT_STRENGTH_MARGINS
    """RM margin for each strength level, used at export."""
    gold_threshold: float = 0.7
    """Annotators below this gold accuracy (with at least `min_gold` gold items) are flagged."""
    min_gold: int = 5
    """Gold items needed before the accuracy flag is raised."""
    min_seconds: float = 3.0
    """Annotators whose median time per item is below this are flagged as suspiciously fast."""
    assignment_ttl_minutes: float = DEFAULT_ASSIGNMENT_TTL_MINUTES
    """Lease of an unanswered assignment: once older than this it expires, its overlap slot goes
    back to the pool, and a late answer is kept only if the task still has room (else 409).
    0 = assignments never expire."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form settings (e.g. the name of an automatic judge run)."""

    def check(self) -> None:
        if self.overlap < 1:
            raise ProjectError("overlap must be ≥ 1")
        if not self.assignment_ttl_minutes >= 0:  # also refuses NaN
            raise ProjectError("assignment_ttl_minutes must be ≥ 0 (0 = never expire)")
        for name in ("gold_share", "repeat_share"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ProjectError(f"{name} must lie in [0, 1)")
        if len(self.strength_margins) != 4:
            raise ProjectError("strength_margins needs one margin per strength level (4)")
        if not all(math.isfinite(m) for m in self.strength_margins):
            raise ProjectError("strength_margins must be finite numbers")
        if not 0.0 <= self.gold_threshold <= 1.0:  # also refuses NaN
            raise ProjectError("gold_threshold must lie in [0, 1]")
        # With 0 the report would judge annotators who saw no gold item (accuracy None).
        if self.min_gold < 1:
            raise ProjectError("min_gold must be ≥ 1")
        if not self.min_seconds >= 0:
            raise ProjectError("min_seconds must be ≥ 0")
        if self.repeat_gap < 1:
            raise ProjectError("repeat_gap must be ≥ 1")


@dataclass(frozen=True)
class Source:
    """Where a batch of candidate sets came from, so import errors read `FILE:LINE: field: …`."""

    file: str = "<candidate_sets>"
    """The JSONL path, or a stand-in for sets passed from Python."""
    lines: tuple[int, ...] = ()
    """Line of each set in `file`; empty = set i is on line i + 1 (one set per line)."""

    def line(self, i: int) -> int:
        return self.lines[i] if self.lines else i + 1

    def at(self, i: int) -> str:
        return f"{self.file}:{self.line(i)}"


def read_candidate_file(path: str | Path) -> tuple[list[CandidateSet], Source]:
    """CandidateSet records of a JSONL file and their lines; blank lines are skipped. A line
    that is not UTF-8 or not a valid record raises ProjectError naming file, line and field."""
    from pydantic import ValidationError

    sets, lines = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ProjectError(f"{path}:{n}: not UTF-8 (byte {err.start + 1} of the line: "
                                   f"{err.reason})") from err
            if not line.strip():
                continue
            try:
                sets.append(CandidateSet.model_validate_json(line))
            except ValidationError as err:
                raise ProjectError(f"{path}:{n}: " + "; ".join(
                    f"{_field_name(e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
                    for e in err.errors())) from err
            lines.append(n)
    return sets, Source(str(path), tuple(lines))


def _field_name(loc: tuple[Any, ...]) -> str:
    """Pydantic's ('candidates', 1, 'text') as `candidates[1].text`."""
    return "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")


def hash_token(token: str) -> str:
    """SHA-256 of a token; tokens are 256-bit random so a plain hash cannot be brute-forced."""
    return hashlib.sha256(token.encode()).hexdigest()


_INSERT_EVENT = Prepared(insert(store.event_log).values(
    at=bindparam("at"), actor=bindparam("actor"), kind=bindparam("kind"),
    project_id=bindparam("project_id"), detail=bindparam("detail", type_=JSON)))


def log_event(conn: Connection, actor: str, kind: str, project_id: int | None,
              detail: dict[str, Any]) -> None:
    """Append one row to the audit log (the table refuses UPDATE and DELETE)."""
    _INSERT_EVENT(conn, {"at": time.time(), "actor": actor, "kind": kind,
                                 "project_id": project_id, "detail": detail})


def ensure_admin_token(engine: Engine) -> str | None:
    """Create the admin token on first start; return it (to print once) or None if one exists."""
    with store.write_transaction(engine) as conn:
        if conn.execute(select(store.setting.c.value).where(
                store.setting.c.key == ADMIN_TOKEN_KEY)).first():
            return None
        token = secrets.token_urlsafe(32)
        conn.execute(insert(store.setting).values(key=ADMIN_TOKEN_KEY, value=hash_token(token)))
        log_event(conn, "cli", "admin_token_created", None, {})
        return token


def rotate_admin_token(engine: Engine) -> str:
    """Replace the admin token (the old one stops working at once); return the new one."""
    token = secrets.token_urlsafe(32)
    with store.write_transaction(engine) as conn:
        conn.execute(store.setting.delete().where(store.setting.c.key == ADMIN_TOKEN_KEY))
        conn.execute(insert(store.setting).values(key=ADMIN_TOKEN_KEY, value=hash_token(token)))
        log_event(conn, "cli", "admin_token_rotated", None, {})
    return token


def is_admin_token(conn: Connection, token: str) -> bool:
    stored = conn.execute(select(store.setting.c.value).where(
        store.setting.c.key == ADMIN_TOKEN_KEY)).scalar()
    return stored is not None and hmac.compare_digest(stored, hash_token(token))


def project_row(conn: Connection, name: str) -> Any:
    row = conn.execute(select(store.project).where(store.project.c.name == name)).first()
    if row is None:
        raise NotFoundError(f"no project named {name!r}")
    return row


@dataclass(frozen=True)
class BatchAdded:
    """What a batch of candidate sets became."""

    project_id: int
    tasks: int
    sets_without_task: list[str]
    """prompt_ids of ab_eval sets whose candidates all come from one model (nothing to compare)."""


def create_project(engine: Engine, name: str, kind: str, candidate_sets: Iterable[CandidateSet],
                   guidelines_md: str = "", settings: ProjectSettings | None = None,
                   seed: int = 0, source: Source | None = None) -> BatchAdded:
    """Create a project and its first batch of tasks. `source` names the file and lines the
    sets came from (`read_candidate_file`), for error messages."""
    settings = settings or ProjectSettings()
    settings.check()
    if kind not in KINDS:
        raise ProjectError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if not name.strip() or len(name) > 200:
        raise ProjectError("project name must be 1–200 characters")
    with store.write_transaction(engine) as conn:
        if conn.execute(select(store.project.c.id).where(store.project.c.name == name)).first():
            raise ConflictError(f"a project named {name!r} exists already")
        pid = conn.execute(insert(store.project).values(
            name=name, kind=kind, guidelines_md=guidelines_md, settings=_settings_json(settings),
            seed=seed, created_at=time.time())).inserted_primary_key[0]
        log_event(conn, "cli", "project_created", pid, {"name": name, "kind": kind})
        return _insert_batch(conn, pid, kind, settings, list(candidate_sets), 0, source or Source())


def _settings_json(settings: ProjectSettings) -> dict[str, Any]:
    out = asdict(settings)
    out["strength_margins"] = list(settings.strength_margins)
    return out


def load_settings(raw: dict[str, Any]) -> ProjectSettings:
    raw = dict(raw)
    raw["strength_margins"] = tuple(raw.get("strength_margins", DEFAULT_STRENGTH_MARGINS))
    return ProjectSettings(**raw)


def add_batch(engine: Engine, project: str, candidate_sets: Iterable[CandidateSet],
              source: Source | None = None) -> BatchAdded:
    """Add candidate sets to a live project (e.g. from a newer checkpoint)."""
    with store.write_transaction(engine) as conn:
        row = project_row(conn, project)
        batch = (conn.execute(select(func.max(store.item.c.batch)).where(
            store.item.c.project_id == row.id)).scalar() or 0) + 1
        return _insert_batch(conn, row.id, row.kind, load_settings(row.settings),
                             list(candidate_sets), batch, source or Source())


def _task_groups(kind: str, cs: CandidateSet, where: str) -> list[tuple[int, ...]]:
    """Candidate index tuples (data order) that become tasks for one candidate set; a set that
    would give none is refused (it would be stored but never shown)."""
    k = len(cs.candidates)
    first: dict[str, int] = {}
    for i, c in enumerate(cs.candidates):
        if c.text in first:
            raise ProjectError(f"{where}: candidates[{i}].text: duplicate of "
                               f"candidates[{first[c.text]}]")
        first[c.text] = i
        if len(c.text) > MAX_RESPONSE_CHARS:
            raise ProjectError(f"{where}: candidates[{i}].text: longer than "
                               f"{MAX_RESPONSE_CHARS} characters")
    if kind == "rating":
        if k == 0:
            raise ProjectError(f"{where}: prompt_id {cs.prompt_id!r}: rating needs ≥ 1 candidate")
        return [(i,) for i in range(k)]
    if kind == "pairwise":
        if k < 2:
            raise ProjectError(f"{where}: prompt_id {cs.prompt_id!r}: pairwise needs ≥ 2 "
                               f"candidates, got {k}")
        return list(itertools.combinations(range(k), 2))
    if kind == "ab_eval":
        models = [c.provenance.model for c in cs.candidates]
        for i, m in enumerate(models):
            if m is None:
                raise ProjectError(f"{where}: candidates[{i}].provenance.model: missing (ab_eval "
                                   "needs the model of every candidate)")
        # Only pairs of different models are shown; same-model pairs compare nothing, and a set
        # from one model (`rlhfkit sample` keeps one copy of a text two variants share) gives
        # no task: `_insert_batch` counts it.
        return [(i, j) for i, j in itertools.combinations(range(k), 2) if models[i] != models[j]]
    lo = BWS_MIN_K if kind == "bws" else 2
    if not lo <= k <= MAX_K:
        raise ProjectError(f"{where}: prompt_id {cs.prompt_id!r}: {kind} needs {lo}–{MAX_K} "
                           f"candidates, got {k}")
    return [tuple(range(k))]


def _gold_scores(kind: str, cs: CandidateSet, where: str) -> list[float] | None:
    """The set's `meta['gold']` scores, checked: one finite number per candidate; for rating an
    integer on the 1–5 scale, since the gold answer is compared with the annotator's rating."""
    gold = cs.meta.get("gold")
    if gold is None:
        return None
    if not isinstance(gold, list) or len(gold) != len(cs.candidates):
        raise ProjectError(f"{where}: meta.gold: must list one score per candidate "
                           f"({len(cs.candidates)})")
    for i, g in enumerate(gold):
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ProjectError(f"{where}: meta.gold[{i}]: {g!r} is not a finite number")
        if kind == "rating" and not (float(g).is_integer() and int(g) in RATING_SCALE):
            raise ProjectError(f"{where}: meta.gold[{i}]: {g!r} is not a rating "
                               f"(an integer {RATING_SCALE[0]}–{RATING_SCALE[-1]})")
    return [float(g) for g in gold]


def _insert_batch(conn: Connection, pid: int, kind: str, settings: ProjectSettings,
                  sets: list[CandidateSet], batch: int, source: Source) -> BatchAdded:
    if not sets:
        raise ProjectError(f"{source.file}: no candidate sets")
    first_line: dict[str, int] = {}
    for i, cs in enumerate(sets):
        if cs.prompt_id in first_line:
            raise ProjectError(f"{source.at(i)}: prompt_id {cs.prompt_id!r} repeats line "
                               f"{first_line[cs.prompt_id]}")
        first_line[cs.prompt_id] = source.line(i)
    checked = [(_task_groups(kind, cs, source.at(i)), _gold_scores(kind, cs, source.at(i)))
               for i, cs in enumerate(sets)]
    without_task = [cs.prompt_id for cs, (groups, _) in zip(sets, checked) if not groups]
    if len(without_task) == len(sets):
        raise ProjectError(f"{source.file}: no set gives a task (ab_eval needs candidates from ≥ 2 "
                           "models in a set)")
    sets, checked = zip(*[(cs, c) for cs, c in zip(sets, checked) if c[0]])
    n_gold = sum(scores is not None for _, scores in checked)
    if n_gold and settings.gold_share == 0:
        raise ProjectError(f"{source.file}: {n_gold} candidate sets carry meta.gold but "
                           "gold_share is 0")
    # Gold tasks are only ever drawn at gold_share; a first batch of nothing else leaves
    # annotators no regular task (e.g. every set from `rlhfkit sample gold_scores: true`).
    if batch == 0 and n_gold == len(sets):
        raise ProjectError(f"{source.file}: every candidate set carries meta.gold, so there "
                           "would be no regular tasks; mix the gold sets into an ordinary "
                           "candidates file (a few gold sets among sets without meta.gold)")
    tasks = []
    for cs, (groups, scores) in zip(sets, checked, strict=True):
        item_id = conn.execute(insert(store.item).values(
            project_id=pid, prompt_id=cs.prompt_id, prompt=_prompt_json(cs),
            meta={k: v for k, v in cs.meta.items() if k != "gold"}, batch=batch,
        )).inserted_primary_key[0]
        cand_ids = [conn.execute(insert(store.candidate).values(
            item_id=item_id, idx=i, text=c.text, finished=c.finished,
            provenance=c.provenance.model_dump(mode="json", exclude_none=True),
        )).inserted_primary_key[0] for i, c in enumerate(cs.candidates)]
        for group in groups:
            gold = None if scores is None else gold_answer(kind, [scores[i] for i in group])
            tasks.append(dict(
                project_id=pid, item_id=item_id, candidate_ids=[cand_ids[i] for i in group],
                is_gold=gold is not None, gold_answer=gold, repeat_of=None,
                overlap=UNLIMITED_OVERLAP if gold is not None else settings.overlap,
                n_assigned=0, is_open=True, batch=batch))
    conn.execute(insert(store.task), tasks)
    log_event(conn, "cli", "batch_added", pid, {"batch": batch, "candidate_sets": len(sets),
                                                "tasks": len(tasks), "gold_sets": n_gold,
                                                "sets_without_task": len(without_task)})
    return BatchAdded(pid, len(tasks), without_task)


def _prompt_json(cs: CandidateSet) -> Any:
    if isinstance(cs.prompt, str):
        return cs.prompt
    return [m.model_dump() for m in cs.prompt]


def add_annotator(engine: Engine, project: str, name: str) -> str:
    """Register an annotator; return their token (shown once; only its hash is stored)."""
    if not name.strip() or len(name) > 200:
        raise ProjectError("annotator name must be 1–200 characters")
    token = secrets.token_urlsafe(32)
    with store.write_transaction(engine) as conn:
        pid = project_row(conn, project).id
        if conn.execute(select(store.annotator.c.id).where(
                store.annotator.c.project_id == pid, store.annotator.c.name == name)).first():
            raise ConflictError(f"annotator {name!r} exists already in {project!r}")
        aid = conn.execute(insert(store.annotator).values(
            project_id=pid, name=name, pseudonym="ann-" + secrets.token_hex(6),
            token_hash=hash_token(token), active=True, created_at=time.time(),
        )).inserted_primary_key[0]
        log_event(conn, "cli", "annotator_added", pid, {"annotator_id": aid})
    return token


def revoke(engine: Engine, project: str, name: str) -> None:
    """Disable an annotator's token at once; their votes are kept."""
    with store.write_transaction(engine) as conn:
        pid = project_row(conn, project).id
        res = conn.execute(update(store.annotator).where(
            store.annotator.c.project_id == pid, store.annotator.c.name == name,
        ).values(active=False))
        if res.rowcount == 0:
            raise NotFoundError(f"no annotator {name!r} in {project!r}")
        log_event(conn, "cli", "annotator_revoked", pid, {"name": name})
