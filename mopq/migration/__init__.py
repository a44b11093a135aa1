"""Disaster migration, export and import: unfinished work moves between deployments.

``mopq migrate --from URI --to URI`` moves every unfinished message (pending,
delayed, inflight whose lease ran out, dead, and activity instances waiting
for their fan-out children) from a *source* deployment to a *target*, keeping
its id, with the activity definitions and queue policies it runs under;
``--dry-run`` counts what would move, ``--verify`` compares both sides.
``mopq export`` / ``mopq import`` do the same through a JSON Lines file.
Counters follow. Killed at any moment (SIGKILL included) and run again, a
migration or an import neither loses nor duplicates a message. The parts,
each with the why of its contract:

* :mod:`.work` — what moves: each collection of unfinished work (:data:`WORK`)
  and how one document of it moves (its *plan*: the copy, the guard of the
  commit, the events that count the move).
* :mod:`.deployments` — the two sides and their ids.
* :mod:`.receiver` — the target's side: stage an invisible copy, record the
  arrival, make it visible.
* :mod:`.move` — the move itself and why a killed one is finished by a rerun.
* :mod:`.declared` — activity definitions and queue policies, and whose wins.
* :mod:`.counters` — how counters follow, exactly once (a round trip too), and
  what is not carried.
* :mod:`.census` — the dry run. :mod:`.verify` — both sides compared.
* :mod:`.backup` — export and import. :mod:`.commands` — the commands.

The states a migration leaves (``moved`` on the source, ``arriving`` on the
target) and the ``arrivals`` collection are in docs/FORMAT.md §3.3.
"""

from __future__ import annotations

from mopq.migration.backup import Exported, Imported, Refused, export, import_lines
from mopq.migration.census import Census, census
from mopq.migration.commands import register
from mopq.migration.deployments import DEPLOYMENT, deployment_id
from mopq.migration.move import Report, migrate
from mopq.migration.verify import Verification, verify
from mopq.migration.work import WORK, Work

__all__ = ["DEPLOYMENT", "WORK", "Census", "Exported", "Imported", "Refused", "Report",
           "Verification", "Work", "census", "deployment_id", "export", "import_lines",
           "migrate", "register", "verify"]
