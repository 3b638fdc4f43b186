"""Schemathesis fuzzing of the OpenAPI spec: every generated request gets a documented answer
(never a 500), with an annotator token and with the admin token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from labelkit import make_setup

from rlhfkit.label import store

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.slow
@pytest.mark.parametrize("who", ["alice", "admin"])
def test_schemathesis_all_checks(tmp_path, live_server, who):
    if not SCHEMATHESIS.exists():
        pytest.skip("pip install schemathesis (the dev extra)")
    engine = store.open_store(store.default_url(tmp_path / "proj"))
    s = make_setup(engine, n=30)
    srv = live_server(engine)
    token = s.admin if who == "admin" else s.tokens["alice"]
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{srv.url}/openapi.json", "-H", f"Authorization: Bearer {token}",
         "--max-examples", "30", "--checks", "all", "--seed", "1"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:]
