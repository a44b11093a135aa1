"""The chaos run (tests/chaos.py) in its one-minute form: kills, a zombie, engine restarts.

It runs as a subprocess, as ``make chaos`` does, and must exit 0 (nothing lost,
no counter drift, no double claim inside a lease). The table must also show
that the chaos really happened (a kill of each kind, a zombie whose late ack
was refused, both engine restarts), so the test cannot pass vacuously.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")


def _count(table: str, label: str) -> str:
    found = re.search(rf"^\s+{re.escape(label)}\s+(\S.*?)\s*$", table, re.MULTILINE)
    assert found, f"no {label!r} row in the table:\n{table}"
    return found.group(1)


def test_one_minute_of_chaos_loses_nothing_and_counts_exactly(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tests.chaos", "--minutes", "1", "--seed", "20251203",
         "--keep", str(tmp_path / "run")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=280)
    table = run.stdout
    assert run.returncode == 0, f"{table}\n--- progress ---\n{run.stderr[-4000:]}"
    assert "no violations" in table
    for kind in ("worker", "producer", "collector"):
        assert int(_count(table, f"kills {kind}")) >= 1, table
    zombies, refused = re.fullmatch(r"(\d+) \((\d+)\)",
                                    _count(table, "zombies (late ack refused)")).groups()
    assert int(zombies) >= 1 and refused == zombies, table
    assert _count(table, "engine restarts graceful") == "1", table
    assert _count(table, "engine restarts kill -9") == "1", table
    assert _count(table, "lost") == "0", table
    assert int(_count(table, "written")) > 100, table
    assert _count(table, "left running after the run") == "0", table
