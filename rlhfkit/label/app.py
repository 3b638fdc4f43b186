"""The FastAPI application: annotator API, admin API, and the static pages.

Auth is a bearer token in the `Authorization` header, sent by the page's `fetch` calls. Browsers
never attach it on their own, so a cross-site form cannot forge a vote (no cookies, no CSRF
token needed). Annotator endpoints only ever read rows of the caller; admin endpoints need the
admin token. Every response carries a strict content-security policy. Every authenticated
request first takes a token from its caller's bucket (`ratelimit`): too fast gets 429 with
`Retry-After`.

On SQLite, database calls are short and run inline on the event loop (no thread hops); on
PostgreSQL the per-vote transactions run in threads, so the loop goes on reading requests while
they wait on the database server (`store_runner`). Either way a vote's COMMIT happens before its
acknowledgement is sent. Several server processes may serve one store
(`rlhfkit annotate serve --workers N`): their writes queue on the store's writer lock
(`store.writing`) and their rate-limit buckets are shared through a file.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import time
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from sqlalchemy import Connection, Engine, func, select

from rlhfkit.label import assign, store
from rlhfkit.label.answers import STRENGTH_LEVELS, AnswerError, SkipIn, StorableText, VoteIn
from rlhfkit.label.projects import (
    ConflictError, NotFoundError, ProjectError, add_annotator, is_admin_token, revoke,
)
from rlhfkit.label.ratelimit import RateLimit, SharedTokenBuckets, TokenBuckets, retry_after

MAX_BODY_BYTES = 128 * 1024
"""Largest request body accepted; bigger ones get 413 before any parsing. Every schema-valid
vote fits: 16,000 characters of critique + edit at ≤ 6 bytes each once JSON-escaped."""
MAX_ID = 2**31 - 1
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
STATIC_FILES = {"app.js": "text/javascript", "admin.js": "text/javascript",
                "style.css": "text/css", "index.html": "text/html", "admin.html": "text/html"}
"""The only files served (by name, from the package): no user-controlled paths at all."""


def store_runner(engine: Engine) -> Callable[[Callable[[], Any]], Any]:
    """How the per-vote endpoints run their transaction: `await run(work)`.

    SQLite: inline on the event loop. Its writes are serialised by the writer lock anyway and a
    vote is ~0.4 ms of CPU, so a thread hop would cost more than it frees. PostgreSQL: in one of
    `store.POSTGRES_POOL_SIZE` threads. Inline, every round trip to the database server and every
    commit's fsync stalled the whole loop (the server process sat idle ~90 % of the time), and
    commits could not overlap into one fsync."""
    if engine.dialect.name == "sqlite":
        async def inline(work: Callable[[], Any]) -> Any:
            return work()

        return inline
    import anyio.to_thread

    limiter = anyio.CapacityLimiter(store.POSTGRES_POOL_SIZE)

    async def in_thread(work: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(work, limiter=limiter)

    return in_thread


class Guard:
    """Pure ASGI middleware: body-size cap (413) and security headers on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await _too_large(send_with_headers)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = b""
            while True:  # chunked upload: read at most the cap, then replay it to the app
                msg = await receive()
                body += msg.get("body", b"")
                if len(body) > MAX_BODY_BYTES:
                    return await _too_large(send_with_headers)
                if not msg.get("more_body"):
                    break
            receive = _replay(body)
        await self.app(scope, receive, send_with_headers)


HOT_NEXT = "/api/v1/tasks/next"
HOT_ANSWER = re.compile(r"/api/v1/tasks/([1-9][0-9]{0,9})/(vote|skip)")
"""The per-vote paths `HotRoutes` answers itself: ids written as FastAPI reads them unchanged
(no sign, no leading zero); every other spelling goes on to FastAPI and its 422."""


class HotRoutes:
    """Pure ASGI shortcut to the per-vote endpoints (`GET /api/v1/tasks/next`, `POST
    /api/v1/tasks/{id}/vote` and `…/skip`) past FastAPI's router and request machinery, which
    cost a fifth of a vote's CPU.

    It calls the very endpoint functions FastAPI has registered (and documents in OpenAPI), and
    hands their exceptions to the app's exception handlers, looked up as Starlette does (status
    code first, then the exception's classes), so each answer is the same as through FastAPI.
    Anything else — other paths and methods, ids FastAPI would refuse, an exception no handler
    takes (500) — goes on down the usual stack.
    """

    def __init__(self, app: Any, endpoints: dict[str, Callable[..., Any]],
                 handlers: dict[Any, Callable[..., Any]]) -> None:
        self.app, self.endpoints, self.handlers = app, endpoints, handlers

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        call = self._route(scope) if scope["type"] == "http" else None
        if call is None:
            return await self.app(scope, receive, send)
        # Yield once before the work (which never awaits): the event loop then polls its sockets
        # before serving, so the requests read meanwhile queue behind this one in arrival order.
        # Without it the loop served in rounds and a request arriving just after a poll waited
        # out one round and then its place in the next: p99 latency 2x the median (70 against
        # 35 ms under 50 annotators), now 1.2x, same throughput.
        await asyncio.sleep(0)
        request = Request(scope, receive, send)
        try:
            response = await call(request)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _route(self, scope: dict) -> Callable[[Request], Any] | None:
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == HOT_NEXT:
            return self.endpoints["next"]
        if method != "POST" or not path.startswith("/api/v1/tasks/"):
            return None
        m = HOT_ANSWER.fullmatch(path)
        if m is None or int(m[1]) > MAX_ID:
            return None
        endpoint, task_id = self.endpoints[m[2]], int(m[1])
        return lambda request: endpoint(request, task_id)

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        if isinstance(exc, StarletteHTTPException) and exc.status_code in self.handlers:
            return self.handlers[exc.status_code]
        return next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)


async def _too_large(send: Any) -> None:
    body = json.dumps({"detail": f"request body too large (limit {MAX_BODY_BYTES} bytes)"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes) -> Any:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


class ErrorOut(BaseModel):
    detail: Any
    """What went wrong: a message, or FastAPI's list of field errors (422)."""
    code: str | None = None
    """Set where the status alone is ambiguous: `assignment_expired` (409: the task's lease ran
    out and its slots went to other annotators, so the answer was not saved)."""


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": why} for code, why in (
        (400, "Invalid admin request"),
        (401, "Missing, malformed, unknown or revoked token"),
        (403, "Admin token required"),
        (404, "No such project, annotator or task (or the task is not yours)"),
        (409, "Already voted on or skipped; the assignment expired and the task went to other "
              "annotators (`code`: `assignment_expired`); or the name exists already"),
        (413, "Request body too large"),
        (422, "Invalid input"),
        (429, "Too many requests for this token; `Retry-After` gives the seconds to wait"),
        (503, "The store is busy (another process held its writer lock past the busy timeout); "
              "retry"))}


class MessageOut(BaseModel):
    role: str
    content: str


class ResponseOut(BaseModel):
    position: int
    """1-based shown position (“Response 1” …)."""
    text: str
    """The model's text; render as text, never as HTML."""


class TaskOut(BaseModel):
    task_id: int
    kind: str
    seq: int
    """This annotator's item number."""
    prompt: str | list[MessageOut]
    responses: list[ResponseOut]


class ProgressOut(BaseModel):
    done: int
    skipped: int


class NextOut(BaseModel):
    task: TaskOut | None
    """The next task, or null when there is nothing left for you."""
    progress: ProgressOut


class MeOut(BaseModel):
    annotator: str
    project: str
    kind: str
    guidelines_html: str
    strength_levels: list[str] | None
    progress: ProgressOut


class NewAnnotatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StorableText = Field(min_length=1, max_length=200)


def _json(obj: Any) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False, separators=(",", ":")),
                    media_type="application/json")


def _parse(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a JSON body; errors become FastAPI's usual 422 (locations under `body`)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _task_param() -> Any:
    # A fresh Path() per parameter: FastAPI must not share one FieldInfo between parameters.
    return Path(ge=1, le=MAX_ID)


def _name_param() -> Any:
    return Path(min_length=1, max_length=200)


def _bearer(authorization: str | None) -> str:
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) > 200:
        raise HTTPException(401, "missing or malformed `Authorization: Bearer <token>` header",
                            headers={"WWW-Authenticate": "Bearer"})
    return authorization[len("Bearer "):]


def render_guidelines(markdown: str) -> str:
    """Guidelines as HTML with raw HTML in the source escaped (markdown-it, `html` off)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).render(markdown)


ADMIN_BUCKET = 0
"""Rate-limit key of the admin token; annotators use their ids (≥ 1)."""


def create_app(engine: Engine, rate_limit: RateLimit = RateLimit(),
               clock: Callable[[], float] = time.time,
               shared_buckets: pathlib.Path | None = None) -> FastAPI:
    """The app over an already migrated store (see `store.open_store`).

    `rate_limit`: requests per token (`RateLimit(per_minute=0)` turns it off). `clock`: seconds
    since the epoch, for assignment leases, issue/submit times and the rate limit (tests pass a
    fake one; the buckets ignore a clock that steps back). `shared_buckets`: a file holding the
    rate-limit buckets of all the server's processes (None: kept in this process).
    """
    app = FastAPI(title="rlhfkit annotation", version="1", docs_url=None, redoc_url=None,
                  responses=ERROR_RESPONSES)
    buckets = (TokenBuckets(rate_limit, clock) if shared_buckets is None
               else SharedTokenBuckets(shared_buckets, rate_limit, clock))

    def throttle(key: int) -> None:
        wait = buckets.take(key)
        if wait > 0:
            after = retry_after(wait)
            raise HTTPException(
                429, f"too many requests: {rate_limit.per_minute:g} a minute per token "
                     f"(bursts of {rate_limit.burst}); retry in {after} s",
                headers={"Retry-After": after})

    known: dict[int, assign.Annotator] = {}  # see assign.authenticate: `active` is always re-read

    # Auth and throttling are inline calls on the vote path, inside the vote's own transaction
    # (FastAPI's dependency machinery costs a third of a vote's CPU there), and a dependency
    # elsewhere; same 401 / 429 answers.
    def who_of(conn: Connection, request: Request) -> assign.Annotator:
        token = _bearer(request.headers.get("authorization"))
        who = assign.authenticate(conn, token, known)
        if who is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        throttle(who.id)
        return who

    async def annotator(request: Request) -> assign.Annotator:
        with engine.connect() as conn:
            return who_of(conn, request)

    async def admin(request: Request) -> None:
        token = _bearer(request.headers.get("authorization"))
        with engine.connect() as conn:
            if not is_admin_token(conn, token):
                raise HTTPException(403, "admin token required")
        throttle(ADMIN_BUCKET)

    _errors(app)
    hot = _annotator_routes(app, engine, who_of, annotator, clock)
    _admin_routes(app, engine, admin)
    _static_routes(app)
    app.add_middleware(HotRoutes, endpoints=hot, handlers=app.exception_handlers)
    app.add_middleware(Guard)  # added last, so outermost: its cap and headers cover HotRoutes
    return app


def _errors(app: FastAPI) -> None:
    def handler(status: int):
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return handle

    app.add_exception_handler(assign.NotFound, handler(404))
    app.add_exception_handler(assign.AlreadySubmitted, handler(409))

    async def expired(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": "assignment_expired"}, status_code=409)

    app.add_exception_handler(assign.AssignmentExpired, expired)

    async def busy(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    app.add_exception_handler(store.StoreBusy, busy)
    app.add_exception_handler(AnswerError, handler(422))
    app.add_exception_handler(NotFoundError, handler(404))
    app.add_exception_handler(ConflictError, handler(409))
    app.add_exception_handler(ProjectError, handler(400))
    app.add_exception_handler(RequestValidationError, _validation_error)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's default handler echoes the offending input back and crashes (500) when that input
    is bytes that are not UTF-8; report where and what instead, never the raw input."""
    detail = [{"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")),
               "type": str(err.get("type", ""))} for err in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _annotator_routes(app: FastAPI, engine: Engine,
                      who_of: Callable[[Connection, Request], assign.Annotator],
                      annotator: Any, clock: Callable[[], float]) -> dict[str, Callable[..., Any]]:
    """Register the annotator endpoints; return the per-vote ones, for `HotRoutes`."""

    @app.get("/api/v1/me", response_model=MeOut)
    async def me(who: assign.Annotator = Depends(annotator)) -> dict:
        with engine.connect() as conn:
            prog = assign.progress(conn, who)
        strength = who.kind in ("pairwise", "ab_eval") and who.settings.with_strength
        return {"annotator": who.name, "project": who.project_name, "kind": who.kind,
                "guidelines_html": render_guidelines(who.guidelines_md),
                "strength_levels": list(STRENGTH_LEVELS) if strength else None, "progress": prog}

    # The hot endpoints build their JSON directly (the schema is declared for OpenAPI, not
    # re-validated on the way out: the dicts come from our own code, not from the client).
    hot = {"response_model": None, "responses": {200: {"model": NextOut}}}  # OpenAPI only

    def next_out(conn: Any, who: assign.Annotator, now: float,
                 after_seq: int | None = None) -> Response:
        task = assign.next_task(conn, who, after_seq, now)
        return _json({"task": task, "progress": assign.progress(conn, who)})

    # The per-vote endpoints take only the request (and the task id), so `HotRoutes` can call
    # them directly: auth and body parsing are done inline, with the same 401 / 422 answers,
    # and the body schema is declared for OpenAPI by hand. One pooled connection per request:
    # auth and the rate limit read on it before the writer lock is taken (so refused requests
    # never hold it), then one transaction holds the write and the next task. The body is read
    # first (nothing may await inside) but checked after auth: 401, 429, then 422.
    run = store_runner(engine)

    @app.get("/api/v1/tasks/next", **hot)
    async def next_task(request: Request) -> Response:
        def work() -> Response:
            with engine.connect() as conn:
                who = who_of(conn, request)
                with store.writing(conn):
                    return next_out(conn, who, clock())

        return await run(work)

    async def answer(request: Request, task_id: int, model: type[BaseModel],
                     record: Callable[..., int | None]) -> Response:
        """A vote or a skip: `record(conn, who, task_id, body, now)` stores it and returns the seq
        to continue from; the answer carries the next task."""
        raw = await request.body()

        def work() -> Response:
            with engine.connect() as conn:
                who = who_of(conn, request)
                body = _parse(model, raw)
                with store.writing(conn):
                    now = clock()
                    return next_out(conn, who, now, record(conn, who, task_id, body, now))

        return await run(work)

    @app.post("/api/v1/tasks/{task_id}/vote", **hot, openapi_extra=_body_doc(VoteIn))
    async def vote(request: Request, task_id: int = _task_param()) -> Response:
        """Record a vote; the answer carries the next task so the page needs one round trip."""
        return await answer(request, task_id, VoteIn, assign.submit_vote)

    @app.post("/api/v1/tasks/{task_id}/skip", **hot, openapi_extra=_body_doc(SkipIn))
    async def skip(request: Request, task_id: int = _task_param()) -> Response:
        return await answer(request, task_id, SkipIn, assign.skip_task)

    @app.get("/api/v1/votes")
    async def my_votes(who: assign.Annotator = Depends(annotator)) -> list[dict]:
        """Your own votes and skips, in the shown positions you gave them."""
        with engine.connect() as conn:
            return assign.my_votes(conn, who)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    return {"next": next_task, "vote": vote, "skip": skip}


def _admin_routes(app: FastAPI, engine: Engine, admin: Any) -> None:
    guard = [Depends(admin)]

    @app.get("/api/v1/admin/projects", dependencies=guard)
    async def projects() -> list[dict]:
        P, T, A = store.project, store.task, store.assignment
        with engine.connect() as conn:
            rows = conn.execute(select(P.c.name, P.c.kind, P.c.id)).all()
            out = []
            for r in rows:
                n_tasks = conn.execute(select(func.count()).where(T.c.project_id == r.id)).scalar()
                n_votes = conn.execute(select(func.count()).select_from(A).join(T).where(
                    T.c.project_id == r.id, A.c.status == "voted")).scalar()
                out.append({"name": r.name, "kind": r.kind, "tasks": n_tasks, "votes": n_votes})
        return out

    @app.get("/api/v1/admin/projects/{name}/report", dependencies=guard)
    async def report(name: str = _name_param()) -> dict:
        from rlhfkit.label.report import project_report

        return project_report(engine, name)

    @app.get("/api/v1/admin/projects/{name}/export", dependencies=guard)
    async def export(name: str = _name_param(),
                     what: Literal["raw", "aggregated"] = Query("raw")) -> list[dict]:
        from rlhfkit.label.export import export_records

        return [r.model_dump(mode="json") for r in export_records(engine, name, what)]

    @app.post("/api/v1/admin/projects/{name}/annotators", dependencies=guard)
    async def new_annotator(body: NewAnnotatorIn, name: str = _name_param()) -> dict:
        token = add_annotator(engine, name, body.name)
        return {"name": body.name, "token": token, "invite_path": f"/#token={token}"}

    @app.post("/api/v1/admin/projects/{name}/annotators/{annotator}/revoke", dependencies=guard)
    async def revoke_annotator(name: str = _name_param(), annotator: str = _name_param()) -> dict:
        revoke(engine, name, annotator)
        return {"revoked": annotator}


def _static_routes(app: FastAPI) -> None:
    files = resources.files("rlhfkit.label") / "static"
    cache = {name: files.joinpath(name).read_bytes() for name in STATIC_FILES}

    def serve(name: str) -> Response:
        return Response(cache[name], media_type=STATIC_FILES[name])

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return serve("index.html")

    @app.get("/admin", include_in_schema=False)
    async def admin_page() -> Response:
        return serve("admin.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)  # no icon; answering keeps browser consoles clean

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in cache:
            raise HTTPException(404, "no such file")
        return serve(name)
