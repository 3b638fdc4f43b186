"""The annotator and admin pages in real headless Chromium (Playwright), keyboard only."""

from __future__ import annotations

import os
import shutil

import pytest
from labelkit import candidate_sets, make_setup
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
