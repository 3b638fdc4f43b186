"""`Prepared` statements give what `Connection.execute` gives (types processed both ways), on
SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import JSON, bindparam, func, insert, select, update

from rlhfkit.label import store
from rlhfkit.label.prepared import Prepared

S = store.setting
E = store.event_log


def test_prepared_matches_core_execution(engine):
    add = insert(E).values(at=bindparam("at"), actor=bindparam("actor"), kind="k",
                           project_id=bindparam("pid"), detail=bindparam("detail", type_=JSON))
    rows = select(E.c.id, E.c.at, E.c.actor, E.c.project_id, E.c.detail).where(E.c.kind == "k") \
        .order_by(E.c.id)
    detail = {"nested": [1, 2.5, None, "é"], "flag": True}
    with store.write_transaction(engine) as conn:
        made = Prepared(add)(conn, {"at": 1.5, "actor": "a", "pid": None, "detail": detail})
        assert made.rowcount == 1
        Prepared(add)(conn, {"at": 2.0, "actor": "b", "pid": None, "detail": []})
        core = [tuple(r) for r in conn.execute(rows).all()]
        ours = Prepared(rows)(conn).all()
        assert [tuple(r) for r in ours] == core
        assert ours[0].detail == detail and ours[0].actor == "a" and ours[1].detail == []
        assert Prepared(select(func.count()).select_from(E).where(E.c.kind == "k"))(conn).scalar() == 2
        assert Prepared(rows.where(E.c.actor == bindparam("who")))(conn, {"who": "nobody"}).first() is None
        setting = Prepared(insert(S).values(key=bindparam("k"), value=bindparam("v")))
        setting(conn, {"k": "x", "v": "1"})
        bump = Prepared(update(S).where(S.c.key == bindparam("k")).values(value=bindparam("v"))
                        .returning(S.c.key, S.c.value))
        assert tuple(bump(conn, {"k": "x", "v": "2"}).one()) == ("x", "2")
        assert bump(conn, {"k": "missing", "v": "2"}).first() is None
        with pytest.raises(LookupError):
            bump(conn, {"k": "missing", "v": "2"}).one()
        with pytest.raises(KeyError):
            bump(conn, {"k": "x"})  # a required parameter left out


def test_a_statement_that_needs_rendering_per_call_is_refused(engine):
    keys = Prepared(select(S.c.key).where(S.c.key.in_(bindparam("ks", expanding=True))))
    with engine.connect() as conn, pytest.raises(ValueError, match="not preparable"):
        keys(conn, {"ks": ["a"]})
