"""The annotator and admin pages in real headless Chromium (Playwright), keyboard only."""

from __future__ import annotations

import os
import shutil

import pytest
from labelkit import FakeClock, candidate_sets, make_setup
from sqlalchemy import select

from rlhfkit.label import projects, store

pytestmark = pytest.mark.browser

expect = None  # playwright's `expect`, bound once the browser fixture has imported playwright
CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    global expect
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def sqlite_engine(tmp_path):
    eng = store.open_store(store.default_url(tmp_path / "proj"))
    yield eng
    eng.dispose()


@pytest.fixture
def page_for(browser):
    contexts = []

    def open_page(url: str):
        ctx = browser.new_context(viewport={"width": 1366, "height": 768})  # a laptop screen
        contexts.append(ctx)
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        page.errors = errors
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()


def votes(engine):
    A, N = store.assignment, store.annotator
    with engine.connect() as conn:
        return conn.execute(select(N.c.name, A.c.task_id, A.c.shown_answer, A.c.answer,
                                   A.c.display_order, A.c.critique, A.c.edited)
                            .join(N, N.c.id == A.c.annotator_id)
                            .where(A.c.status == "voted").order_by(A.c.id)).all()


def shown_texts(page):
    return page.locator(".response .text").all_inner_texts()


def test_keyboard_only_pairwise_flow(sqlite_engine, live_server, page_for):
    s = make_setup(sqlite_engine, n=2, annotators=("alice",))
    srv = live_server(sqlite_engine)
    page = page_for(f"{srv.url}/#token={s.tokens['alice']}")
    page.wait_for_selector(".response")
    assert "token" not in page.url  # the invite token is taken out of the address bar
    first = shown_texts(page)
    page.keyboard.press("2")
    page.keyboard.press("e")  # strength level 2 ("better")
    page.keyboard.press("c")  # critique field
    page.keyboard.type("too long")
    page.keyboard.press("Escape")
    page.keyboard.press("t")  # edited-response field
    page.keyboard.type("shorter")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    expect(page.locator("#progress")).to_contain_text("done 1")
    assert shown_texts(page) != first
    page.keyboard.press("0")  # tie
    page.keyboard.press("Enter")
    page.wait_for_selector("#done", state="visible")
    rows = votes(sqlite_engine)
    assert [r.shown_answer for r in rows] == [{"choice": "2", "strength": 2}, {"choice": "tie"}]
    assert (rows[0].critique, rows[0].edited) == ("too long", "shorter")
    assert rows[0].answer["winner"] == rows[0].display_order[1]
    assert page.errors == []


def test_ranking_with_a_tie(sqlite_engine, live_server, page_for):
    s = make_setup(sqlite_engine, kind="ranking", n=1, k=3, annotators=("alice",))
    page = page_for(f"{live_server(sqlite_engine).url}/#token={s.tokens['alice']}")
    page.wait_for_selector(".response")
    for key in ("2", "=", "1", "3"):
        page.keyboard.press(key)
    assert page.locator("#rank-list").inner_text() == "2 = 1 > 3"  # HTML collapses spaces
    page.keyboard.press("Enter")
    page.wait_for_selector("#done", state="visible")
    (row,) = votes(sqlite_engine)
    assert row.shown_answer == {"ranking": [[2, 1], [3]]}
    order = row.display_order
    expect = [0, 0, 0]
    expect[order[1]] = expect[order[0]] = 1
    expect[order[2]] = 3
    assert row.answer["ranks"] == expect


def test_rating_and_safe_rendering(sqlite_engine, live_server, page_for):
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    sets = candidate_sets(1, k=1)
    sets[0].candidates[0].text = evil
    s = make_setup(sqlite_engine, kind="rating", sets=sets, annotators=("alice",))
    page = page_for(f"{live_server(sqlite_engine).url}/#token={s.tokens['alice']}")
    page.wait_for_selector(".response")
    assert shown_texts(page) == [evil]
    assert page.locator(".response img, .response script").count() == 0
    assert page.evaluate("window.pwned === undefined")
    page.keyboard.press("4")
    page.keyboard.press("Enter")
    page.wait_for_selector("#done", state="visible")
    assert [r.answer for r in votes(sqlite_engine)] == [{"rating": 4}]


def test_gold_item_gives_no_feedback(sqlite_engine, live_server, page_for):
    sets = candidate_sets(4, gold={0: [1.0, 0.0], 1: [1.0, 0.0]})
    s = make_setup(sqlite_engine, sets=sets, annotators=("alice",),
                   settings=projects.ProjectSettings(overlap=1, gold_share=0.9))
    page = page_for(f"{live_server(sqlite_engine).url}/#token={s.tokens['alice']}")
    statuses = []
    for n in range(1, 5):
        page.wait_for_selector(".response")
        assert "gold" not in page.locator("body").inner_text().lower()
        page.keyboard.press("1")
        page.keyboard.press("Enter")
        expect(page.locator("#progress")).to_contain_text(f"done {n}")
        statuses.append(page.locator("#status").inner_text())
    expect(page.locator("#done")).to_be_visible()
    assert statuses == ["Saved."] * 4  # the same acknowledgement whether gold or not
    with sqlite_engine.connect() as conn:
        gold = {r.id for r in conn.execute(select(store.task.c.id).where(store.task.c.is_gold))}
    assert len(gold) == 2 and gold & {r.task_id for r in votes(sqlite_engine)}


def test_two_annotators_cannot_see_each_others_votes(sqlite_engine, live_server, page_for):
    s = make_setup(sqlite_engine, n=2, settings=projects.ProjectSettings(overlap=2))
    url = live_server(sqlite_engine).url
    alice = page_for(f"{url}/#token={s.tokens['alice']}")
    alice.wait_for_selector(".response")
    alice.keyboard.press("1")
    alice.keyboard.press("Enter")
    expect(alice.locator("#progress")).to_contain_text("done 1")
    bob = page_for(f"{url}/#token={s.tokens['bob']}")
    bob.wait_for_selector(".response")
    assert bob.locator("#progress").inner_text() == "done 0, skipped 0"
    theirs = bob.evaluate("""async () => (await fetch('/api/v1/votes', {headers:
        {Authorization: 'Bearer ' + sessionStorage.getItem('rlhfkit-annotator-token')}})).json()""")
    assert theirs == []
    assert bob.evaluate("sessionStorage.getItem('rlhfkit-annotator-token')") == s.tokens["bob"]


def test_order_stable_per_annotator_and_balanced(sqlite_engine, live_server, page_for):
    s = make_setup(sqlite_engine, n=1, settings=projects.ProjectSettings(overlap=2))
    url = live_server(sqlite_engine).url
    alice = page_for(f"{url}/#token={s.tokens['alice']}")
    alice.wait_for_selector(".response")
    a1 = shown_texts(alice)
    alice.reload()
    alice.wait_for_selector(".response")
    assert shown_texts(alice) == a1  # same order after a reload
    bob = page_for(f"{url}/#token={s.tokens['bob']}")
    bob.wait_for_selector(".response")
    assert shown_texts(bob) == a1[::-1]  # the second annotator of the task sees it swapped


def test_admin_agreement_matches_hand_computation(sqlite_engine, live_server, page_for, client_for):
    s = make_setup(sqlite_engine, n=4, settings=projects.ProjectSettings(overlap=2))
    c = client_for(sqlite_engine)
    # Both annotators vote by *candidate*: alice prefers candidate 0 on every task; bob agrees on
    # the first three tasks and calls the last a tie.
    for name, tie_last in (("alice", False), ("bob", True)):
        t = c.get("/api/v1/tasks/next", headers=s.h(name)).json()["task"]
        n = 0
        while t:
            n += 1
            first_is_0 = t["responses"][0]["text"].endswith(".0")
            choice = "tie" if tie_last and n == 4 else ("1" if first_is_0 else "2")
            t = c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h(name),
                       json={"choice": choice}).json()["task"]
    # Hand: 4 units, 3 agree -> raw 3/4; without ties 3/3. Cohen: alice [0,0,0,0],
    # bob [0,0,0,tie]: p_o = 3/4, p_e = 1·(3/4) = 3/4 -> κ = 0.
    page = page_for(f"{live_server(sqlite_engine).url}/admin")
    page.fill("#token-input", s.admin)
    page.keyboard.press("Enter")
    page.wait_for_selector("#agreement tr")
    cell = lambda key: page.locator(f'#agreement tr[data-metric="{key}"] td')  # noqa: E731
    assert cell("raw").inner_text() == "0.750"
    assert cell("raw_without_ties").inner_text() == "1"
    assert float(cell("cohen_kappa").get_attribute("data-value")) == pytest.approx(0.0, abs=1e-12)
    assert page.locator('#summary tr[data-metric="votes"] td').inner_text() == "8"


def test_late_vote_after_the_lease_says_it_was_not_saved(sqlite_engine, live_server, page_for,
                                                         client_for):
    s = make_setup(sqlite_engine, n=1, settings=projects.ProjectSettings(
        overlap=1, with_strength=False, assignment_ttl_minutes=30))
    clock = FakeClock()
    page = page_for(f"{live_server(sqlite_engine, clock=clock).url}/#token={s.tokens['alice']}")
    page.wait_for_selector(".response")
    clock.advance(31 * 60)  # alice left the tab open; bob gets the task and answers it
    c = client_for(sqlite_engine, clock=clock)
    t = c.get("/api/v1/tasks/next", headers=s.h("bob")).json()["task"]
    assert c.post(f"/api/v1/tasks/{t['task_id']}/vote", headers=s.h("bob"),
                  json={"choice": "1"}).status_code == 200
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("not saved")
    assert page.locator("#status").get_attribute("class") == "error"
    expect(page.locator("#done")).to_be_visible()
    assert [r.name for r in votes(sqlite_engine)] == ["bob"]


# ---------------------------------------------------------------------------------------- round trip
ROUND_TRIP_PROMPTS = 24
"""Pairwise tasks voted in the browser (two annotators, overlap 1): a few seconds of Chromium,
and enough pairs for a tiny reward model to fit in a few dozen steps."""


def gold_labelled_sets(n: int):
    """Candidate sets of the reviews task, two demonstrations each, and the gold reward of every
    candidate text (texts unique across sets; sets whose candidates tie on gold left out)."""
    from rlhfkit.data.schemas import Candidate, CandidateSet
    from rlhfkit.tasks import get_task

    task = get_task("reviews", seed=0)
    sets, gold = [], {}
    for i, p in enumerate(task.prompts("train", 2 * n)):
        texts = list(dict.fromkeys(task.sample_demos(p.prompt, 2, seed=0)))[:2]
        scores = [task.gold_reward(p.prompt, t) for t in texts]
        if len(texts) < 2 or scores[0] == scores[1] or any(t in gold for t in texts):
            continue
        gold.update(zip(texts, scores))
        sets.append(CandidateSet(prompt_id=f"train-{i}", prompt=p.prompt,
                                 candidates=[Candidate(text=t) for t in texts]))
        if len(sets) == n:
            break
    return sets, gold


@pytest.mark.slow
def test_browser_votes_to_export_to_trained_reward_model(tmp_path, live_server, page_for):
    """Two annotators vote in the page, always for the response the task's gold reward prefers;
    the project is exported with `rlhfkit annotate export`, and `rlhfkit rm` trains a tiny reward
    model on the export that ranks the voted pairs as they were voted."""
    import json

    from typer.testing import CliRunner

    from rlhfkit.cli import app as cli
    from rlhfkit.data import read_records
    from rlhfkit.rundir import read_metrics

    project_dir = tmp_path / "annotation"
    engine = store.open_store(store.default_url(project_dir))
    sets, gold = gold_labelled_sets(ROUND_TRIP_PROMPTS)
    assert len(sets) == ROUND_TRIP_PROMPTS
    s = make_setup(engine, sets=sets, annotators=("alice", "bob"),
                   settings=projects.ProjectSettings(overlap=1, with_strength=False))
    url = live_server(engine).url
    pages = [page_for(f"{url}/#token={s.tokens[name]}") for name in ("alice", "bob")]
    clicked, done = [], [0, 0]
    while len(clicked) < len(sets):  # the two annotators take turns, one vote each
        for n, page in enumerate(pages):
            page.wait_for_selector(".response, #done:not([hidden])")
            if page.locator("#done").is_visible():
                continue
            prompt = page.locator("#prompt").text_content()
            shown = page.locator(".response .text").evaluate_all("els => els.map(e => e.textContent)")
            best = max(range(2), key=lambda i: gold[shown[i]])
            page.keyboard.press(str(best + 1))
            page.keyboard.press("Enter")
            done[n] += 1
            expect(page.locator("#progress")).to_contain_text(f"done {done[n]},")
            clicked.append((prompt, shown[best], shown[1 - best]))
    assert min(done) > 0 and sum(done) == len(sets)
    assert all(p.errors == [] for p in pages)

    run = CliRunner().invoke
    votes_file = tmp_path / "votes.jsonl"
    r = run(cli, ["annotate", "export", "proj", "--what", "raw", "--out", str(votes_file),
                  "--dir", str(project_dir)])
    assert r.exit_code == 0, r.output
    pairs, _ = read_records(votes_file, kind="pair")
    assert len(pairs) == len(clicked)
    assert sorted((p.prompt, p.chosen, p.rejected) for p in pairs) == sorted(clicked)
    assert not any(p.tie for p in pairs) and len({p.annotator for p in pairs}) == 2

    # Training accuracy on the exported pairs (eval_path = the export itself): 24 pairs teach a
    # from-scratch RM nothing that generalises (held-out accuracy ≈ 0.5 here), but it must fit
    # the votes it was given, in the direction they were cast.
    out = tmp_path / "rm"
    r = run(cli, ["rm", f"data.train_path={votes_file}", f"data.eval_path={votes_file}",
                  "data.kind=pair", "model.tiny.hidden_size=32", "model.tiny.num_layers=1",
                  "model.tiny.num_heads=2", "model.tiny.vocab_size=200",
                  "model.tiny.tokenizer_lines=300", "model.tiny.max_positions=128",
                  "batch_size=8", "micro_batch_size=8", "max_steps=40", "optim.lr=3e-3",
                  "optim.warmup_ratio=0", "run.eval_every=1", f"run.out_dir={out}",
                  "run.progress=false", "run.num_threads=1", "normalize.source=none"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    losses = [row["eval/loss"] for row in read_metrics(out) if "eval/loss" in row]
    assert summary["eval_pairs"] == len(clicked)
    assert summary["eval_accuracy"] >= 0.9  # chance is 0.5
    # Loss on the voted pairs after step 1 vs step 40 (here 0.62 → 0.0002; ln 2 = indifferent).
    assert len(losses) == 40 and losses[-1] < 0.1 * losses[0]
