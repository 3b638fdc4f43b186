"""HTTP API of the annotation app: every endpoint, bad input (always 4xx with a message, never
500), auth and IDOR, double submit, overlap, shown-order stability and balance, gold silence,
repeats, skips, security headers. Runs on SQLite, and on PostgreSQL when configured."""

from __future__ import annotations

import json

import pytest
from labelkit import candidate_sets, make_setup
from sqlalchemy import func, select, text

from rlhfkit.label import projects, store
from rlhfkit.label.app import CSP, MAX_BODY_BYTES


def vote_all(client, s, name, body_of=lambda task: {"choice": "1"}):
    """Vote on everything `name` is given; return the tasks seen (in order)."""
    seen = []
    nxt = client.get("/api/v1/tasks/next", headers=s.h(name)).json()["task"]
    while nxt is not None:
        seen.append(nxt)
        r = client.post(f"/api/v1/tasks/{nxt['task_id']}/vote", headers=s.h(name),
                        json=body_of(nxt))
        assert r.status_code == 200, r.text
        nxt = r.json()["task"]
    return seen


def test_me_and_guidelines_escape_html(engine, client_for):
    s = make_setup(engine, guidelines="# Rules\n<script>alert(1)</script> **bold**")
    r = client_for(engine).get("/api/v1/me", headers=s.h("alice"))
    assert r.status_code == 200
    me = r.json()
    assert me["kind"] == "pairwise" and me["annotator"] == "alice"
    assert "<h1>Rules</h1>" in me["guidelines_html"] and "<strong>bold</strong>" in me["guidelines_html"]
    assert "<script>" not in me["guidelines_html"]
    assert len(me["strength_levels"]) == 4


def test_auth_required_and_revocation(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    assert c.get("/api/v1/tasks/next").status_code == 401
    assert c.get("/api/v1/tasks/next", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/v1/tasks/next", headers={"Authorization": "Basic x"}).status_code == 401
    assert c.get("/api/v1/tasks/next", headers=s.h("alice")).status_code == 200
    projects.revoke(engine, "proj", "alice")
    r = c.get("/api/v1/tasks/next", headers=s.h("alice"))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert c.get("/api/v1/admin/projects", headers=s.h("bob")).status_code == 403
    assert c.get("/api/v1/admin/projects", headers=s.h("admin")).status_code == 200


def test_task_view_hides_provenance_and_order_is_stable(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    first = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    again = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    assert first == again  # same task, same order, until answered
    blob = json.dumps(first)
    for secret in ("provenance", "model", "sft", "ppo", "is_gold", "candidate", "gold"):
        assert secret not in blob
    assert set(first) == {"task_id", "kind", "seq", "prompt", "responses"}
    assert all(set(r) == {"position", "text"} for r in first["responses"])


def test_vote_then_double_submit_is_409_and_stores_one_vote(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    url = f"/api/v1/tasks/{t['task_id']}/vote"
    r1 = c.post(url, headers=s.h("alice"), json={"choice": "2", "strength": 3, "critique": "ok"})
    assert r1.status_code == 200 and r1.json()["progress"] == {"done": 1, "skipped": 0}
    r2 = c.post(url, headers=s.h("alice"), json={"choice": "1"})
    assert r2.status_code == 409 and "already" in r2.json()["detail"]
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(store.assignment).where(
            store.assignment.c.task_id == t["task_id"],
            store.assignment.c.status == "voted")).scalar()
    assert n == 1


@pytest.mark.parametrize("body, fragment", [
    ({"choice": "3"}, "choice"),
    ({"choice": "1", "strength": 7}, "strength"),
    ({"choice": "tie", "strength": 1}, "strength"),
    ({}, "needs `choice`"),
    ({"rating": 3}, "do not apply"),
    ({"choice": "1", "surprise": 1}, "surprise"),
    ({"choice": "1", "critique": "x" * 5000}, "critique"),
    ({"choice": "1", "critique": "a\x00b"}, "NUL"),
    ({"choice": "1", "elapsed_ms": -5}, "elapsed_ms"),
])
def test_bad_pairwise_votes_are_422_with_message(engine, client_for, body, fragment):
    s = make_setup(engine)
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json=body)
    assert r.status_code == 422
    assert fragment in json.dumps(r.json()["detail"])


def test_malformed_requests_never_500(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    h = {**s.h("alice"), "Content-Type": "application/json"}
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    url = f"/api/v1/tasks/{t['task_id']}/vote"
    assert c.post(url, headers=h, content=b"{not json").status_code == 422
    assert c.post(url, headers=h, content=b"[1,2]").status_code == 422
    # Not UTF-8 (found by the schemathesis fuzz: FastAPI's default handler crashed echoing it).
    bad = c.post(url, headers=h, content=b"\xfa\xfb{")
    assert bad.status_code == 422 and bad.json()["detail"]
    assert c.post("/api/v1/tasks/abc/vote", headers=h, json={"choice": "1"}).status_code == 422
    assert c.post(f"/api/v1/tasks/{2**40}/vote", headers=h, json={"choice": "1"}).status_code == 422
    big = c.post(url, headers=h, content=b" " * (MAX_BODY_BYTES + 1))
    assert big.status_code == 413 and "too large" in big.json()["detail"]
    assert c.post(f"/api/v1/tasks/{t['task_id']}/skip", headers=h, json={"reason": ""}).status_code == 422
    assert c.post(f"/api/v1/tasks/{t['task_id']}/skip", headers=h, json={"reason": " \n "}).status_code == 422


def test_idor_other_annotators_tasks_and_votes_are_invisible(engine, client_for):
    s = make_setup(engine, settings=projects.ProjectSettings(overlap=1))
    c = client_for(engine)
    ta = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    tb = c.get("/api/v1/tasks/next", headers=s.h("bob")).json()["task"]
    assert ta["task_id"] != tb["task_id"]  # overlap 1: disjoint
    c.post(f"/api/v1/tasks/{ta['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    for verb in ("vote", "skip"):
        body = {"choice": "2"} if verb == "vote" else {"reason": "x"}
        r = c.post(f"/api/v1/tasks/{ta['task_id']}/{verb}", headers=s.h("bob"), json=body)
        assert r.status_code == 404
    mine = c.get("/api/v1/votes", headers=s.h("bob")).json()
    assert mine == []
    alices = c.get("/api/v1/votes", headers=s.h("alice")).json()
    assert [v["task_id"] for v in alices] == [ta["task_id"]]
    assert alices[0]["shown_answer"] == {"choice": "1"}


def test_overlap_cap_and_rotation_balance_positions(engine, client_for):
    names = tuple(f"a{i}" for i in range(4))
    s = make_setup(engine, n=6, annotators=names, settings=projects.ProjectSettings(overlap=4))
    c = client_for(engine)
    first_text = {}
    for name in names:
        for t in vote_all(c, s, name):
            first_text.setdefault(t["task_id"], []).append(t["responses"][0]["text"])
    assert len(first_text) == 6
    for texts in first_text.values():  # 4 annotators, K=2: each response first exactly twice
        assert len(texts) == 4 and sorted(texts.count(x) for x in set(texts)) == [2, 2]
    extra = projects.add_annotator(engine, "proj", "late")
    r = c.get("/api/v1/tasks/next", headers={"Authorization": f"Bearer {extra}"}).json()
    assert r["task"] is None  # every task already has its 4 annotations


def test_gold_items_give_no_feedback_and_are_scored(engine, client_for):
    sets = candidate_sets(4, gold={0: [1.0, 0.0], 1: [0.0, 1.0]})
    s = make_setup(engine, sets=sets, annotators=("alice",),
                   settings=projects.ProjectSettings(overlap=1, gold_share=0.5))
    c = client_for(engine)
    seen = vote_all(c, s, "alice", body_of=lambda t: {"choice": "1"})
    assert len(seen) == 4  # 2 regular + 2 gold
    with engine.connect() as conn:
        gold_ids = {r.id for r in conn.execute(select(store.task.c.id).where(store.task.c.is_gold))}
    assert gold_ids <= {t["task_id"] for t in seen}
    gold_views = [t for t in seen if t["task_id"] in gold_ids]
    assert all(set(t) == {"task_id", "kind", "seq", "prompt", "responses"} for t in gold_views)
    # By hand: alice always picks position 1; the gold winner is "answer 0.0" for prompt 0 and
    # "answer 1.1" for prompt 1, so she is right where that text was shown first.
    better = {"Prompt number 0?": "answer 0.0", "Prompt number 1?": "answer 1.1"}
    expect = sum(t["responses"][0]["text"] == better[t["prompt"]] for t in gold_views)
    rep = c.get("/api/v1/admin/projects/proj/report", headers=s.h("admin")).json()
    assert rep["gold"]["n"] == 2
    assert rep["gold"]["accuracy"] == pytest.approx(expect / 2)


def test_skip_returns_slot_and_reason_kept(engine, client_for):
    s = make_setup(engine, n=1, settings=projects.ProjectSettings(overlap=1))
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    assert c.get("/api/v1/tasks/next", headers=s.h("bob")).json()["task"] is None
    r = c.post(f"/api/v1/tasks/{t['task_id']}/skip", headers=s.h("alice"), json={"reason": "unsure"})
    assert r.status_code == 200 and r.json()["progress"] == {"done": 0, "skipped": 1}
    assert r.json()["task"] is None  # alice does not get her skipped task back
    assert c.get("/api/v1/tasks/next", headers=s.h("bob")).json()["task"]["task_id"] == t["task_id"]
    assert c.get("/api/v1/votes", headers=s.h("alice")).json()[0]["skip_reason"] == "unsure"


def test_repeats_come_back_reversed(engine, client_for):
    s = make_setup(engine, n=12, annotators=("alice",),
                   settings=projects.ProjectSettings(overlap=1, repeat_share=0.5, repeat_gap=2))
    c = client_for(engine)
    seen = vote_all(c, s, "alice")
    by_prompt = {}
    for t in seen:
        by_prompt.setdefault(t["prompt"], []).append([r["text"] for r in t["responses"]])
    repeated = {p: v for p, v in by_prompt.items() if len(v) == 2}
    assert repeated, "with repeat_share 0.5 over 12 items some repeat is expected (seeded)"
    for first, again in repeated.values():
        assert again == first[::-1]
    rep = c.get("/api/v1/admin/projects/proj/report", headers=s.h("admin")).json()
    # always "1" on a reversed repeat = the other candidate: never self-consistent
    assert rep["self_consistency"] == {"value": 0.0, "n": len(repeated)}


def test_ranking_rating_bws_payloads(engine, client_for):
    s = make_setup(engine, kind="ranking", n=1, k=3, annotators=("alice",))
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    url = f"/api/v1/tasks/{t['task_id']}/vote"
    bads = [({"ranking": [[1, 2]]}, "exactly once"), ({"ranking": [[1], [1, 2, 3]]}, "exactly once"),
            ({"ranking": [[1], [], [2, 3]]}, "empty group"),
            ({"ranking": [[1, 2, 4]]}, "exactly once"),
            ({"ranking": [[1], [2], [3]], "not_rankable": True}, "either")]
    for bad, frag in bads:
        r = c.post(url, headers=s.h("alice"), json=bad)
        assert r.status_code == 422 and frag in r.json()["detail"], (bad, r.text)
    assert c.post(url, headers=s.h("alice"), json={"ranking": [[2], [1, 3]]}).status_code == 200
    with engine.connect() as conn:
        row = conn.execute(select(store.assignment.c.answer, store.assignment.c.display_order)).one()
    order = row.display_order
    ranks = [0, 0, 0]
    ranks[order[1]] = 1
    ranks[order[0]] = ranks[order[2]] = 2
    assert row.answer == {"ranks": ranks, "not_rankable": False}


def test_security_headers_on_pages_and_api(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    for path, hdrs in (("/", {}), ("/admin", {}), ("/static/app.js", {}),
                       ("/api/v1/me", s.h("alice")), ("/api/v1/tasks/next", {})):
        r = c.get(path, headers=hdrs)
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    assert c.get("/static/../store.py").status_code == 404
    assert c.get("/static/store.py").status_code == 404


def test_admin_endpoints(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    for name in ("alice", "bob"):
        vote_all(c, s, name, body_of=lambda t: {"choice": "1", "strength": 2})
    ah = s.h("admin")
    assert c.get("/api/v1/admin/projects", headers=ah).json() == [
        {"name": "proj", "kind": "pairwise", "tasks": 4, "votes": 8}]
    assert c.get("/api/v1/admin/projects/nope/report", headers=ah).status_code == 404
    raw = c.get("/api/v1/admin/projects/proj/export?what=raw", headers=ah).json()
    assert len(raw) == 8 and all(r["margin"] == pytest.approx(2 / 3) for r in raw)
    assert c.get("/api/v1/admin/projects/proj/export?what=bad", headers=ah).status_code == 422
    r = c.post("/api/v1/admin/projects/proj/annotators", headers=ah, json={"name": "carol"})
    token = r.json()["token"]
    assert r.json()["invite_path"] == f"/#token={token}"
    assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.post("/api/v1/admin/projects/proj/annotators", headers=ah,
                  json={"name": "carol"}).status_code == 409
    assert c.post("/api/v1/admin/projects/proj/annotators/carol/revoke", headers=ah).status_code == 200
    assert c.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_event_log_is_append_only(engine, client_for):
    s = make_setup(engine)
    c = client_for(engine)
    vote_all(c, s, "alice")
    with engine.connect() as conn:
        kinds = [k for (k,) in conn.execute(select(store.event_log.c.kind))]
    assert kinds.count("vote") == 4 and "project_created" in kinds
    for stmt in ("UPDATE event SET kind = 'x'", "DELETE FROM event"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(stmt))


def test_new_batch_while_live(engine, client_for):
    s = make_setup(engine, n=1, annotators=("alice",), settings=projects.ProjectSettings(overlap=1))
    c = client_for(engine)
    assert len(vote_all(c, s, "alice")) == 1
    assert projects.add_batch(engine, "proj", candidate_sets(2, prefix="q")).tasks == 2
    assert len(vote_all(c, s, "alice")) == 2



def test_revocation_from_another_process_applies_to_a_cached_annotator(engine, client_for, db_url):
    """The app caches who holds a token (assign.authenticate's `known`), but re-reads `active`
    on every request: a revocation made elsewhere (the CLI, another engine) applies at once."""
    s = make_setup(engine, n=4)
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert r.status_code == 200  # alice is in the cache now
    other = store.make_engine(db_url)  # as `rlhfkit annotate revoke` in its own process would
    projects.revoke(other, "proj", "alice")
    other.dispose()
    t = r.json()["task"]
    r = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert c.get("/api/v1/me", headers=s.h("alice")).status_code == 401
    assert c.get("/api/v1/tasks/next", headers=s.h("bob")).status_code == 200


def test_hot_routes_answer_exactly_as_fastapi_does(engine, client_for, monkeypatch):
    """`HotRoutes` answers the per-vote paths itself; every error must come out as it does when
    FastAPI routes the same request (checked by turning the shortcut off for the second call)."""
    from rlhfkit.label.app import HotRoutes

    s = make_setup(engine, n=4)
    c = client_for(engine)
    t = c.get("/api/v1/tasks/next", headers=s.h("alice")).json()["task"]
    done = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("alice"), json={"choice": "1"})
    mine = done.json()["task"]["task_id"]
    bobs = c.get("/api/v1/tasks/next", headers=s.h("bob")).json()["task"]["task_id"]
    cases = [  # each answer leaves the store as it was, so both runs see the same state
        ("GET", "/api/v1/tasks/next", {}, None),
        ("GET", "/api/v1/tasks/next", {"Authorization": "Bearer nope"}, None),
        ("POST", f"/api/v1/tasks/{mine}/vote", {}, {"choice": "1"}),
        ("POST", f"/api/v1/tasks/{mine}/vote", s.h("alice"), {"choice": "7"}),
        ("POST", f"/api/v1/tasks/{mine}/vote", s.h("alice"), {"rating": 3}),
        ("POST", f"/api/v1/tasks/{mine}/skip", s.h("alice"), {"reason": ""}),
        ("POST", f"/api/v1/tasks/{bobs}/vote", s.h("alice"), {"choice": "1"}),
        ("POST", f"/api/v1/tasks/{t['task_id']}/vote", s.h("alice"), {"choice": "1"}),
        ("POST", f"/api/v1/tasks/{2**31 - 1}/skip", s.h("alice"), {"reason": "x"}),
    ]
    for method, path, headers, body in cases:
        hot = c.request(method, path, headers=headers, json=body)
        with monkeypatch.context() as m:
            m.setattr(HotRoutes, "_route", lambda self, scope: None)
            routed = c.request(method, path, headers=headers, json=body)
        assert hot.status_code == routed.status_code and hot.status_code >= 400, (path, hot.text)
        assert hot.json() == routed.json()
        assert dict(hot.headers) == dict(routed.headers)
    # Spellings FastAPI reads differently (or refuses) are left to it.
    for path in ("/api/v1/tasks/007/vote", "/api/v1/tasks/+7/vote", f"/api/v1/tasks/{2**31}/vote"):
        assert HotRoutes._route(None, {"method": "POST", "path": path}) is None
    assert c.post("/api/v1/tasks/0/vote", headers=s.h("alice"), json={"choice": "1"}).status_code == 422
    assert c.put(f"/api/v1/tasks/{mine}/vote", headers=s.h("alice"), json={}).status_code == 405
