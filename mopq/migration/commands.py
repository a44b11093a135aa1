"""The commands ``mopq migrate``, ``mopq export`` and ``mopq import``: arguments and reports.

Exit codes: 0 done (or, for ``--verify``, identical); 1 stopped or not
finished (the engine did not answer, a bad import line, messages left on the
source, differences found), always with what to do next; 2 the command
itself is wrong (same deployment twice, a bad queue name, a newer storage
format). Every report says what was not done and why.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from mopq import schema
from mopq.activities.recovery import SPAWN_GRACE_SECONDS
from mopq.config import settings
from mopq.connection import get_client, resolve_uri
from mopq.errors import InvalidInput
from mopq.migration.backup import Imported, Refused, export, import_lines
from mopq.migration.census import Census, census
from mopq.migration.declared import Declared
from mopq.migration.deployments import Sides
from mopq.migration.move import BATCH_SIZE, Move, Report
from mopq.migration.verify import Verification, verify
from mopq.migration.work import HELD, queue_names

MAX_LISTED = 12          # kinds of uncounted events named in a report
MAX_DIFFERENCES = 200    # differences printed by --verify
MAX_IDS = 20             # message ids named in a report


class Unreachable(Exception):
    """A deployment named on the command line did not answer."""


def _database(uri: str | None, name: str | None) -> Database:
    """The database a URI names (its path), else ``name``, else ``MOPQ_DATABASE``."""
    uri = resolve_uri(uri)
    in_uri = parse_uri(uri).get("database")
    return get_client(uri)[name or in_uri or settings().database]


def _where(db: Database) -> str:
    nodes = ",".join(f"{host}:{port}" for host, port in db.client.topology_description
                     .server_descriptions())
    return f"{nodes}/{db.name}"


def _answering(db: Database, role: str, option: str) -> Database:
    """``db`` once its server answered a ping; else :class:`Unreachable` naming the option."""
    try:
        db.client.admin.command("ping")
    except PyMongoError as error:
        raise Unreachable(f"the {role} ({_where(db)}) did not answer: {error}. Check {option} "
                          "and that the server runs; nothing was written") from None
    return db


# What stops a command: the command is wrong (exit 2), or a deployment did not answer or
# changed under it (exit 1; running it again is safe).
STOPPERS = (InvalidInput, schema.FormatMismatch, Unreachable, PyMongoError, RuntimeError)


def _stopped(command: str, error: Exception, again: str) -> int:
    """Say why ``command`` stopped and what to do; return its exit code."""
    if isinstance(error, InvalidInput | schema.FormatMismatch):
        print(f"mopq {command}: {error}", file=sys.stderr)
        return 2
    if isinstance(error, Unreachable):
        print(f"mopq {command}: {error}", file=sys.stderr)
    else:
        print(f"mopq {command}: stopped: {error}. {again}", file=sys.stderr)
    return 1


def _say(lines: list[str], file: Any = None) -> None:
    for line in lines:
        print(line, file=file)


def _rows(counts: Mapping[tuple[str, str], int]) -> list[str]:
    by_queue: dict[str, list[str]] = {}
    for (queue, label), count in sorted(counts.items(), key=lambda item: (str(item[0][0]),
                                                                            item[0][1])):
        by_queue.setdefault(str(queue), []).append(f"{label} {count}")
    return [f"  {queue}: {', '.join(parts)}" for queue, parts in by_queue.items()]


def _not_carried_lines(found: Mapping[str, int], where: str, again: str) -> list[str]:
    if not found:
        return [f"counters: every event of the {where} is counted, nothing left out"]
    listed = ", ".join(f"{key} {count}" for key, count in sorted(found.items())[:MAX_LISTED])
    more = f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else ""
    return [f"not carried: {sum(found.values())} event(s) the {where}'s collectors have not "
            f"applied yet ({listed}{more}); run a collector there (mopq collect) and {again} "
            "to carry them"]


def _queues_note(queues: tuple[str, ...] | None) -> str:
    return ("; only these queues' own series (all-queue, activity, business and collector "
            "series mix queues and stay on the source)" if queues else "")


def _moves_lines(verb: str, moves: Counter[tuple[str, str]], held: Counter[tuple[str, str]],
                 forced: Counter[str], forced_ids: list[Any]) -> list[str]:
    """What moved (or would), per queue and state; what did not, and what may run twice."""
    total = sum(moves.values())
    lines = [f"{verb}: {total} document(s)" + (":" if total else ""), *_rows(moves)]
    leases = Counter({key: count for key, count in held.items() if key[1] == HELD})
    spawning = Counter({key: count for key, count in held.items() if key[1] != HELD})
    if leases:
        lines += [f"not moved: {sum(leases.values())} inflight message(s) whose lease is still "
                  "held; run again once their leases have run out, or add --force:",
                  *_rows(leases)]
    if spawning:
        lines += [f"not moved: {sum(spawning.values())} activity instance(s) whose fan-out "
                  f"children are still being written; run again in {SPAWN_GRACE_SECONDS:g} s "
                  "(a spawner dead that long is replaced by the move):", *_rows(spawning)]
    if forced:
        holders = ", ".join(f"{count} by {holder}" for holder, count in forced.items())
        listed = ", ".join(str(i) for i in forced_ids[:MAX_IDS])
        more = f" and {len(forced_ids) - MAX_IDS} more" if len(forced_ids) > MAX_IDS else ""
        lines += [f"--force: {sum(forced.values())} held message(s) {verb} while their holders "
                  f"still work on them ({holders}). Those holders' acknowledgements are refused "
                  "on the source (LeaseLost), and the messages run again on the target: work a "
                  "holder finished after the move runs twice.",
                  f"  may run twice: {listed}{more}"]
    return lines


def _names(counts: Mapping[tuple[str, str], int]) -> list[str]:
    by_name: dict[str, list[str]] = {}
    for name, what in sorted(counts):
        by_name.setdefault(name, []).append(what)
    return [f"  {name}: {', '.join(whats)}" for name, whats in by_name.items()]


def _declared_lines(verb: str, declared: Declared) -> list[str]:
    """Activity definitions and queue policies: carried (or would be), the same, kept."""
    lines = [f"definitions and policies {verb}: {sum(declared.carried.values())}"
             + (":" if declared.carried else ""), *_names(declared.carried)]
    if declared.same:
        lines.append(f"definitions and policies the same on the target already: "
                     f"{sum(declared.same.values())}")
    if declared.kept:
        lines += [f"kept as the target has them (its own setting wins: an admin's over code's, "
                  f"else the later one): {sum(declared.kept.values())}:",
                  *_names(declared.kept)]
    return lines


def _print_census(found: Census, queues: tuple[str, ...] | None) -> None:
    _say(_moves_lines("would move", found.moves, found.held, found.forced, found.forced_ids))
    if found.earlier:
        print(f"moved here by earlier runs: {sum(found.earlier.values())}")
    if found.staged_on_target:
        print(f"staged on the target by a run that stopped: {found.staged_on_target} "
              "(the next run finishes them)")
    _say(_declared_lines("to carry", found.declared))
    print(f"history: {found.history} finished message(s) to copy (for Queue.result and "
          "write_once)")
    print(f"counters: {found.counters} counter document(s) to carry{_queues_note(queues)}")
    _say(_not_carried_lines(found.not_carried, "source", "run this again"))


def _print_report(report: Report, queues: tuple[str, ...] | None) -> None:
    _say(_moves_lines("moved", report.moved, report.skipped, report.forced, report.forced_ids))
    if report.already:
        print(f"already on the target (imported earlier), marked moved on the source: "
              f"{sum(report.already.values())}")
    if report.reconciled:
        print(f"finished from an earlier run: {report.reconciled} staged copy(ies) made "
              "visible on the target")
    if report.unique_dropped:
        print(f"{len(report.unique_dropped)} message(s) moved without their dedupe key's "
              "uniqueness: the key is held on the target by another unfinished message, and "
              "both will run")
    if report.present:
        print(f"left on the source: {len(report.present)} message(s) the target already holds "
              "under the same id without having received them from here (first ids: "
              + ", ".join(str(i) for i in report.present[:MAX_IDS]) + "); compare them by hand")
    if report.left:
        print(f"still on the source: {len(report.left)} message(s) changed while being moved "
              "(claimed, acknowledged, retried); run again to move what is left of them")
    _say(_declared_lines("carried", report.declared))
    print(f"history: {report.history} finished message(s) copied")
    if report.children_counted:
        print(f"activities: {report.children_counted} fan-out child(ren) that finished apart "
              "from their parent counted into it on the target")
    print(f"counters: {report.carried.counters} counter document(s) carried, "
          f"{report.carried.unchanged} already up to date{_queues_note(queues)}")
    if report.unpublished:
        print(f"{report.unpublished} event(s) of the moves are still in the source's "
              "outboxes (it did not answer); the next run publishes them")
    _say(_not_carried_lines(report.not_carried, "source", "run this again"))


def _print_verification(result: Verification) -> None:
    print(f"moved on the source: {sum(result.moved.values())}; arrived on the target: "
          f"{sum(result.arrived.values())}")
    for queue in sorted(set(result.moved) | set(result.arrived), key=str):
        print(f"  {queue}: moved {result.moved[queue]}, arrived {result.arrived[queue]}")
    if result.on_target:
        _say(["on the target now:", *_rows(result.on_target)])
    if result.still_on_source:
        _say(["still unfinished on the source (the next run moves them):",
              *_rows(result.still_on_source)])
    _say(_declared_lines("still to carry", result.declared))
    print(f"counters: {result.counters_same} carried as the source has them, "
          f"{result.counters_differ} not")
    _say(_not_carried_lines(result.not_carried, "source", "run migrate again"))
    if result.identical:
        print("identical: every message moved on the source arrived on the target with the "
              "same content, and the counters carry the source's sums")
        return
    print(f"{len(result.differences)} difference(s):")
    for line in result.differences[:MAX_DIFFERENCES]:
        print(f"  {line}")
    if len(result.differences) > MAX_DIFFERENCES:
        print(f"  ... and {len(result.differences) - MAX_DIFFERENCES} more")


def _cmd_migrate(args: argparse.Namespace) -> int:
    if args.dry_run and args.verify:
        print("mopq migrate: --dry-run and --verify are two different looks; pass one",
              file=sys.stderr)
        return 2
    try:
        source = _answering(_database(args.source, args.from_database), "source", "--from")
        target = _answering(_database(args.target, args.to_database), "target", "--to")
        queues = queue_names(args.queue)
        print(f"mopq migrate: from {_where(source)} to {_where(target)}"
              + (f", queues {', '.join(queues)}" if queues else ""), flush=True)
        if args.verify:
            result = verify(source, target, queues)
            print(f"source deployment {result.source_id or '(none yet)'}, target "
                  f"{result.target_id or '(none yet)'}")
            _print_verification(result)
            return 0 if result.identical else 1
        if args.dry_run:
            found = census(source, target, queues, args.force)
            print(f"source deployment {found.source_id or '(none yet)'}, target "
                  f"{found.target_id or '(none yet)'} (dry run: nothing written)")
            _print_census(found, queues)
            return 0
        report = Move(Sides.open(source, target, queues, create=True), args.force,
                      args.batch_size).run()
    except STOPPERS as error:
        return _stopped("migrate", error, "Nothing moved is lost or doubled: run the same "
                        "command again")
    print(f"source deployment {report.source_id}, target {report.target_id}")
    _print_report(report, queues)
    return 1 if report.left or report.present else 0


def _cmd_export(args: argparse.Namespace) -> int:
    to_stdout = args.output == "-"
    partial = f"{args.output}.partial"
    try:
        queues = queue_names(args.queue)
        db = _answering(_database(args.source, args.from_database), "deployment", "--from")
        if to_stdout:
            result = export(db, sys.stdout, queues)
        else:
            # Written aside and renamed once complete: a file named FILE is a whole export.
            with open(partial, "w", encoding="utf-8") as file:
                result = export(db, file, queues)
            os.replace(partial, args.output)
    except (InvalidInput, schema.FormatMismatch) as error:
        print(f"mopq export: {error}", file=sys.stderr)
        return 2
    except (Unreachable, PyMongoError, OSError) as error:
        if not to_stdout and os.path.exists(partial):
            os.remove(partial)
        what = f"cannot write {args.output}: " if isinstance(error, OSError) else ""
        outcome = ("what reached stdout has no end line, so mopq import refuses it"
                   if to_stdout else "no export file was written")
        print(f"mopq export: {what}{error}; {outcome}", file=sys.stderr)
        return 1
    report = sys.stderr if to_stdout else sys.stdout
    documents = ", ".join(f"{name} {count}" for name, count in result.documents.items())
    print(f"mopq export: {result.lines} lines to {args.output} from {_where(db)} (deployment "
          f"{result.source_id}, as of {result.at.isoformat()}): {documents or 'nothing'}",
          file=report)
    _say(_rows(result.states), report)
    _say(_not_carried_lines(result.not_carried, "exported deployment", "export again"), report)
    return 0


def _print_imported(db: Database, result: Imported) -> None:
    added = Counter({f"{collection} {state}": count
                     for (collection, state), count in result.added.items() if count})
    listed = ", ".join(f"{key} {count}" for key, count in sorted(added.items()))
    print(f"mopq import: into {_where(db)} from the export of deployment "
          f"{result.source_id or '?'} ({result.database}, as of "
          f"{result.at.isoformat() if result.at else '?'}): added {listed or 'nothing'}; "
          f"already there {sum(result.already.values())}; counters: "
          f"{result.carried.counters} carried, {result.carried.unchanged} already up to date")
    _say(_declared_lines("carried", result.declared))
    if result.was_inflight:
        print(f"{result.was_inflight} message(s) were inflight when exported: imported as "
              "pending. Their holders worked against the exported deployment, so a message "
              "one of them finished runs again here.")
    if result.not_carried:
        print(f"the export says {sum(result.not_carried.values())} event(s) of its deployment "
              "were not counted yet when it was taken, so its counters leave them out: "
              + ", ".join(f"{k} {v}" for k, v in sorted(result.not_carried.items())[:MAX_LISTED]))
    if result.unique_dropped:
        print(f"{len(result.unique_dropped)} message(s) imported without their dedupe key's "
              "uniqueness: the key is held here by another unfinished message; both will run")


def _cmd_import(args: argparse.Namespace) -> int:
    code = 0
    try:
        db = _answering(_database(args.target, args.to_database), "deployment", "--to")
        if args.input == "-":
            result = import_lines(db, sys.stdin, args.batch_size)
        else:
            with open(args.input, encoding="utf-8") as file:
                result = import_lines(db, file, args.batch_size)
    except Refused as refused:
        print(f"mopq import: {args.input}: line {refused.line}: {refused.reason}",
              file=sys.stderr)
        print(f"mopq import: lines 1 to {refused.line - 1} were imported; nothing from line "
              f"{refused.line} on", file=sys.stderr)
        result = refused.imported
        code = 1
    except STOPPERS as error:
        return _stopped("import", error, "Run the same import again: what was imported is "
                        "not imported twice")
    except (OSError, UnicodeDecodeError) as error:
        print(f"mopq import: cannot read {args.input}: {error}", file=sys.stderr)
        return 1
    _print_imported(db, result)
    return code


def _deployment(parser: argparse.ArgumentParser, side: str, dest: str, what: str,
                required: bool) -> None:
    """``--from``/``--to`` URI and its ``--from-database``/``--to-database``."""
    default = "" if required else " (default MOPQ_MONGODB_URI)"
    parser.add_argument(f"--{side}", dest=dest, required=required, metavar="URI",
                        help=f"{what}{default}; its database: the URI's path, else "
                             f"--{side}-database, else MOPQ_DATABASE")
    parser.add_argument(f"--{side}-database", metavar="NAME", help=f"the database of --{side}")


def _options(parser: argparse.ArgumentParser, queues: bool, batch: str | None) -> None:
    if queues:
        parser.add_argument("--queue", action="append", metavar="NAME",
                            help="only this queue (repeat for several)")
    if batch:
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                            help=f"{batch} written together (default {BATCH_SIZE})")


def register(commands: Any) -> None:
    """Add ``migrate``, ``export`` and ``import`` to the ``mopq`` command."""
    migrate_ = commands.add_parser(
        "migrate", help="move unfinished work to another deployment (ids kept; rerun safely)",
        description="Move every unfinished message (pending, delayed, dead, inflight whose "
                    "lease ran out, activity instances waiting for their children) from one "
                    "deployment to another, keeping ids, after the activity definitions and "
                    "queue policies (the target's own stronger setting is kept and listed). "
                    "Killed at any "
                    "moment and run again, it neither loses nor duplicates a message; run it "
                    "again to catch what producers wrote to the source meanwhile.")
    _deployment(migrate_, "from", "source", "the deployment to move from", required=True)
    _deployment(migrate_, "to", "target", "the deployment to move to", required=True)
    _options(migrate_, queues=True, batch="messages")
    migrate_.add_argument("--dry-run", action="store_true",
                          help="print what would move, per queue and state; write nothing")
    migrate_.add_argument("--verify", action="store_true",
                          help="compare both sides and print every difference (exit 1 if any)")
    migrate_.add_argument("--force", action="store_true",
                          help="also move inflight messages whose lease is still held (they "
                               "may then run twice)")
    migrate_.set_defaults(func=_cmd_migrate)

    export_ = commands.add_parser("export", help="write unfinished work and counters to a "
                                                 "JSON Lines file")
    export_.add_argument("--output", required=True, metavar="FILE", help="the file ('-': stdout)")
    _deployment(export_, "from", "source", "the deployment to export", required=False)
    _options(export_, queues=True, batch=None)
    export_.set_defaults(func=_cmd_export)

    import_ = commands.add_parser("import", help="import an export; importing it again adds "
                                                 "nothing")
    import_.add_argument("--input", required=True, metavar="FILE", help="the file ('-': stdin)")
    _deployment(import_, "to", "target", "the deployment to import into", required=False)
    _options(import_, queues=False, batch="lines")
    import_.set_defaults(func=_cmd_import)
