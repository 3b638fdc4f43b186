"""Admin side of the store: projects, batches of candidate sets, annotators, tokens, the audit log.

Everything here is also reachable from the CLI (`rlhfkit annotate …`). Imports go through this
Python API, never through an HTTP upload.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from sqlalchemy import JSON, Connection, Engine, bindparam, func, insert, select, update

from rlhfkit.data.schemas import CandidateSet
from rlhfkit.label import store
from rlhfkit.label.prepared import Prepared
from rlhfkit.label.answers import BWS_MIN_K, KINDS, MAX_K, gold_answer

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


def create_project(engine: Engine, name: str, kind: str, candidate_sets: Iterable[CandidateSet],
                   guidelines_md: str = "", settings: ProjectSettings | None = None,
                   seed: int = 0) -> int:
    """Create a project and its first batch of tasks; return the project id."""
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
        _insert_batch(conn, pid, kind, settings, list(candidate_sets), batch=0)
    return pid


def _settings_json(settings: ProjectSettings) -> dict[str, Any]:
    out = asdict(settings)
    out["strength_margins"] = list(settings.strength_margins)
    return out


def load_settings(raw: dict[str, Any]) -> ProjectSettings:
    raw = dict(raw)
    raw["strength_margins"] = tuple(raw.get("strength_margins", DEFAULT_STRENGTH_MARGINS))
    return ProjectSettings(**raw)


def add_batch(engine: Engine, project: str, candidate_sets: Iterable[CandidateSet]) -> int:
    """Add candidate sets to a live project (e.g. from a newer checkpoint); return tasks added."""
    with store.write_transaction(engine) as conn:
        row = project_row(conn, project)
        batch = (conn.execute(select(func.max(store.item.c.batch)).where(
            store.item.c.project_id == row.id)).scalar() or 0) + 1
        n = _insert_batch(conn, row.id, row.kind, load_settings(row.settings),
                          list(candidate_sets), batch)
    return n


def _task_groups(kind: str, cs: CandidateSet) -> list[tuple[int, ...]]:
    """Candidate index tuples (data order) that become tasks for one candidate set."""
    k = len(cs.candidates)
    if len({c.text for c in cs.candidates}) != k:
        raise ProjectError(f"prompt {cs.prompt_id!r}: duplicate candidate texts")
    if kind == "rating":
        return [(i,) for i in range(k)]
    if kind == "pairwise":
        if k < 2:
            raise ProjectError(f"prompt {cs.prompt_id!r}: pairwise needs ≥ 2 candidates")
        return list(itertools.combinations(range(k), 2))
    if kind == "ab_eval":
        models = [c.provenance.model for c in cs.candidates]
        if any(m is None for m in models):
            raise ProjectError(f"prompt {cs.prompt_id!r}: ab_eval needs provenance.model on "
                               "every candidate")
        return [(i, j) for i, j in itertools.combinations(range(k), 2) if models[i] != models[j]]
    lo = BWS_MIN_K if kind == "bws" else 2
    if not lo <= k <= MAX_K:
        raise ProjectError(f"prompt {cs.prompt_id!r}: {kind} needs {lo}–{MAX_K} candidates, got {k}")
    return [tuple(range(k))]


def _gold_scores(cs: CandidateSet) -> list[float] | None:
    gold = cs.meta.get("gold")
    if gold is None:
        return None
    if not isinstance(gold, list) or len(gold) != len(cs.candidates):
        raise ProjectError(f"prompt {cs.prompt_id!r}: meta['gold'] must list one score per "
                           "candidate")
    return [float(g) for g in gold]


def _insert_batch(conn: Connection, pid: int, kind: str, settings: ProjectSettings,
                  sets: list[CandidateSet], batch: int) -> int:
    ids = [cs.prompt_id for cs in sets]
    if len(set(ids)) != len(ids):
        raise ProjectError("prompt_id values repeat within the batch")
    n_gold = sum(_gold_scores(cs) is not None for cs in sets)
    if n_gold and settings.gold_share == 0:
        raise ProjectError(f"{n_gold} candidate sets carry meta['gold'] but gold_share is 0")
    tasks = []
    for cs in sets:
        if any(len(c.text) > MAX_RESPONSE_CHARS for c in cs.candidates):
            raise ProjectError(f"prompt {cs.prompt_id!r}: a response exceeds "
                               f"{MAX_RESPONSE_CHARS} characters")
        groups, scores = _task_groups(kind, cs), _gold_scores(cs)
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
    if tasks:
        conn.execute(insert(store.task), tasks)
    log_event(conn, "cli", "batch_added", pid, {"batch": batch, "candidate_sets": len(sets),
                                                "tasks": len(tasks), "gold_sets": n_gold})
    return len(tasks)


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
