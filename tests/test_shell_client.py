"""A client without any driver: curl and bash (clients/shell) against a live dashboard.

The example script writes, writes twice with one key, claims with a long poll,
acknowledges twice, is refused with a stale lease, emits, and waits for an
outcome; the counts the dashboard then shows are exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mopq.collectors.stats import read_stats
from tests.helpers import conserved, drain_log
from tests.live_server import live_dashboard

ROOT = Path(__file__).resolve().parent.parent
PRODUCER = "shell-producer-token-0123"
CONSUMER = "shell-consumer-token-0123"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None,
                                reason="curl and bash are needed")


def test_the_shell_client_writes_claims_acks_and_is_counted(engine_uri, db_name, db,
                                                            tmp_path):
    with live_dashboard(engine_uri, db_name, tmp_path,
                        MOPQ_PRODUCER_TOKENS=f"shell={PRODUCER}",
                        MOPQ_CONSUMER_TOKENS=f"shell={CONSUMER}") as url:
        result = subprocess.run(
            ["bash", str(ROOT / "clients" / "shell" / "example.sh"), "shell"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "MOPQ_URL": url, "MOPQ_PRODUCER_TOKEN": PRODUCER,
                 "MOPQ_CONSUMER_TOKEN": CONSUMER})
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("put twice, written once", "stale lease refused", "emitted", "outcome done"):
        assert line in result.stdout, result.stdout
    assert result.stdout.count("(twice)") == 2
    drain_log(db)
    row = read_stats(db)["queues"]["shell"]
    assert (row["written"], row["done"]) == (2, 2) and conserved(row)
