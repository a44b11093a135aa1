"""Server-rendered pages, each behind the read check.

Pages read through ``dashboard.queries`` (the same functions as the JSON API,
so a page and ``/api/...`` never disagree) and render with Jinja's
autoescaping: every queue name, body, error, tag and worker id reaches the
browser as text. Live figures are then kept current by static/*.js from the
``/live`` pushes. When the engine cannot be reached a page still renders,
with a banner saying so instead of figures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request
from pymongo.errors import PyMongoError

from mopq import schedules as schedule_book
from mopq import search as declared
from mopq import validation
from mopq.activities import instances
from mopq.clock import utcnow
from mopq.collectors import series
from mopq.collectors.counters import HOUR, MINUTE, RESOLUTIONS
from mopq.dashboard import activities_api, charts, formatting, live, queries, stats_cache, store
from mopq.dashboard.auth import (
    ADMIN,
    ENABLE_ADMIN,
    current_identity,
    policy,
    require_read,
    unauthorized,
)
from mopq.errors import InvalidInput

blueprint = Blueprint("pages", __name__)
formatting.register(blueprint)

PER_PAGE_CHOICES = (20, 50, 100)
HISTORY_RANGE = {MINUTE: dt.timedelta(hours=3), HOUR: dt.timedelta(days=7)}
MAX_TEXT = 200

NAV = (("pages.overview", "Overview"), ("pages.queue_list", "Queues"),
       ("pages.failed_page", "Failed"), ("pages.search_page", "Search"),
       ("pages.workers_page", "Workers"), ("pages.activities_page", "Activities"),
       ("pages.schedules_page", "Schedules"),
       ("pages.metrics_page", "Metrics"), ("pages.audit_page", "Audit"))


def _why_no_admin() -> str | None:
    """None when the visitor may act; otherwise the tooltip that says how to."""
    if not policy().admin_enabled:
        return ENABLE_ADMIN
    identity = current_identity()
    if identity.role != ADMIN:
        who = "Reading without signing in" if identity.via == "open" else \
            f"Signed in as {identity.name}, who may read but not act"
        return (f"{who}: sign in (the link at the top right) with a user from MOPQ_ADMIN_USERS "
                "to retry, delete or purge.")
    return None


@blueprint.get("/login")
def login() -> Any:
    """Ask the browser for admin credentials, then go back to the page it came from.

    Reading may be open while acting is not (admin users set, no read
    credential): a browser sends basic credentials only once challenged, and
    this is where an admin is challenged.
    """
    target = request.args.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    if current_identity().role == ADMIN:
        return redirect(target)
    if not policy().admin_enabled:
        abort(403, description=ENABLE_ADMIN)
    return unauthorized()


@blueprint.app_context_processor
def _page_context() -> dict[str, Any]:
    return {"nav": NAV, "why_no_admin": _why_no_admin,
            "plotly_style_guards": charts.style_guard_ids}


def engine_problem(error: PyMongoError) -> str:
    """A one-line reason for the banner (pymongo's topology dumps are long)."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "…"


def _read(render: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Run a page's reads; on an engine error, the page gets the banner instead."""
    try:
        return {"engine_error": None, **render(store.database())}
    except PyMongoError as error:
        return {"engine_error": engine_problem(error)}


def _text_arg(name: str) -> str | None:
    value = (request.args.get(name) or "").strip()
    return value[:MAX_TEXT] or None


def _int_arg(name: str, default: int, lowest: int, highest: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return max(lowest, min(highest, value))


def _queue_arg(name: str = "queue") -> tuple[str | None, str | None]:
    """(queue name, problem) from the query string; a bad name is reported, not used."""
    value = _text_arg(name)
    if value is None:
        return None, None
    try:
        return validation.queue_name(value), None
    except InvalidInput as error:
        return None, str(error)


def _totals(stats: dict[str, Any]) -> dict[str, Any]:
    fields = ("written", "done", "failed", "dead", "pending", "inflight", "delayed")
    totals = {field: sum(row[field] for row in stats["queues"].values()) for field in fields}
    totals["backlog"] = totals["pending"] + totals["inflight"] + totals["delayed"]
    attempts = totals["done"] + totals["failed"]
    totals["failure_rate"] = totals["failed"] / attempts if attempts else 0.0
    return totals


def _throughput_json(series: dict[str, Any]) -> dict[str, Any]:
    """The chart's series with times as epoch milliseconds (one per second)."""
    start = series["t"][0] if series["t"] else utcnow()
    return {"start": int(start.timestamp() * 1000), "written": series["written"],
            "acked": series["acked"], "failed": series["failed"]}


@blueprint.get("/")
@require_read
def overview() -> str:
    def render(db: Any) -> dict[str, Any]:
        engine = store.engine_info()
        stats = stats_cache.stats(db)
        collector = stats["collector"]
        return {
            "engine": engine, "stats": stats, "totals": _totals(stats),
            "throughput": _throughput_json(series.throughput(db, 300)),
            "collector_behind": collector["lag_seconds"] > collector["lag_warning_seconds"],
            "collector_missing": collector["collectors_alive"] == 0
            and collector["events_waiting"] > 0,
        }
    return render_template("overview.html", **_read(render))


@blueprint.get("/queues")
@require_read
def queue_list() -> str:
    def render(db: Any) -> dict[str, Any]:
        return {"queues": series.queues(db, stats=stats_cache.stats(db))}

    return render_template("queues.html", **_read(render))


@blueprint.get("/queues/<name>")
@require_read
def queue_page(name: str) -> tuple[str, int]:
    try:
        validation.queue_name(name)
    except InvalidInput:
        abort(404)
    resolution = request.args.get("resolution", MINUTE)
    if resolution not in HISTORY_RANGE:
        resolution = MINUTE

    def find(db: Any, stats: dict[str, Any]) -> dict[str, Any] | None:
        return next((q for q in series.queues(db, stats=stats) if q["name"] == name), None)

    def render(db: Any) -> dict[str, Any]:
        # A queue written a moment ago may be newer than the cached stats: before a
        # 404, read them anew (only then, so a page of a known queue costs no read).
        row = find(db, stats_cache.stats(db)) or find(db, stats_cache.cache().refresh(db))
        now = utcnow()
        history = series.queue_history(db, name, resolution, now - HISTORY_RANGE[resolution],
                                        now)
        return {"queue": row, "recent": queries.recent_finished(db, name), "history": {
            "t": [int(t.timestamp() * 1000) for t in history["t"]],
            "counts": history["counts"], "duration_seconds": history["duration_seconds"],
            # the window the range button names, and the bucket width, for the chart's axis
            "since": int((now - HISTORY_RANGE[resolution]).timestamp() * 1000),
            "until": int(now.timestamp() * 1000),
            "step": int(RESOLUTIONS[resolution][0].total_seconds() * 1000)}}

    context = _read(render)
    status = 404 if not context["engine_error"] and context["queue"] is None else 200
    return render_template("queue.html", name=name, resolution=resolution,
                           resolutions=((MINUTE, "per minute, last 3 hours"),
                                        (HOUR, "per hour, last 7 days")),
                           **context), status


@blueprint.get("/failed")
@require_read
def failed_page() -> str:
    queue, problem = _queue_arg()
    error = _text_arg("error")
    state = "failing" if request.args.get("state") == "failing" else "dead"
    per_page = _int_arg("per_page", PER_PAGE_CHOICES[0], 1, PER_PAGE_CHOICES[-1])
    page = _int_arg("page", 1, 1, 100_000)

    def render(db: Any) -> dict[str, Any]:
        result = queries.failed(db, queue, error, state, page, per_page)
        pages = max(1, -(-result["total"] // per_page))
        queue_names = list(stats_cache.stats(db)["queues"])
        return {"result": result, "pages": pages, "queue_names": queue_names}

    return render_template("failed.html", queue=queue, error=error, state=state,
                           per_page=per_page, per_page_choices=PER_PAGE_CHOICES, page=page,
                           problem=problem, **_read(render))


def _search_value(raw: str) -> list[Any]:
    """A typed value matches what producers wrote: ``42`` finds 42 and "42"."""
    values: list[Any] = [raw]
    for kind in (int, float):
        try:
            values.append(kind(raw))
            break
        except ValueError:
            continue
    return values


@blueprint.get("/search")
@require_read
def search_page() -> str:
    message_id = _text_arg("id")
    text = _text_arg("q")
    queue, problem = _queue_arg()

    def render(db: Any) -> dict[str, Any]:
        fields = queries.declared_search_fields(db)
        results: list[dict[str, Any]] | None = None
        issue = problem
        if message_id:
            results = queries.search(db, message_id=message_id)
        elif text and not issue:
            field, equals, value = text.partition("=")
            field, value = field.strip(), value.strip()
            usable = set(fields.get(queue, [])) if queue else \
                {f for names in fields.values() for f in names}
            if not equals or not field or not value:
                issue = "Search by a field as field=value, for example order_id=42."
            elif field not in usable:
                where = f"queue {queue!r}" if queue else "any queue"
                issue = (f"{field!r} is not declared searchable for {where}. Declare it with "
                         f"mopq.search.declare_search_field(queue, {field!r}).")
            else:
                declared.check_field(field)
                results = queries.search(db, field=field, value=_search_value(value),
                                         queue=queue)
        return {"fields": fields, "results": results, "issue": issue}

    return render_template("search.html", message_id=message_id, text=text, queue=queue,
                           limit=queries.MAX_SEARCH_RESULTS, **_read(render))


@blueprint.get("/workers")
@require_read
def workers_page() -> str:
    """The rows a ``workers`` push carries (``dashboard.live``), which then keep them current."""
    return render_template("workers.html", **_read(live.build_workers))


@blueprint.get("/activities")
@require_read
def activities_page() -> str:
    """Batches' progress, definitions as chains of steps, instances (``/api/activities``)."""
    def render(db: Any) -> dict[str, Any]:
        answer = activities_api.overview(db, per_page=200)
        return {"activities": answer["items"], "definitions": answer["definitions"],
                "instances": answer["instances"]}

    return render_template("activities.html", rate_minutes=series.RATE_MINUTES, **_read(render))


@blueprint.get("/activities/<name>/<path:key>")
@require_read
def activity_page(name: str, key: str) -> tuple[str, int]:
    """One activity instance: where it is, each step's attempts and results, its compensation."""
    context = _read(lambda db: {"instance": instances.find(db, name, key)})
    status = 404 if not context["engine_error"] and context["instance"] is None else 200
    return render_template("activity.html", name=name, key=key, **context), status


@blueprint.get("/metrics-ui")
@require_read
def metrics_page() -> str:
    return render_template("metrics.html",
                           **_read(lambda db: {"names": series.metric_names(db)}))


@blueprint.get("/audit")
@require_read
def audit_page() -> str:
    return render_template("audit.html", engine_error=None)


@blueprint.get("/schedules")
@require_read
def schedules_page() -> str:
    """The list comes from /api/schedules (static/schedules.js); the page holds the form."""
    return render_template("schedules.html", engine_error=None,
                           time_zones=sorted(schedule_book.time_zones()),
                           catch_up_policies=schedule_book.CATCH_UP_POLICIES)
