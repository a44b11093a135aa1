"""Activities over HTTP: batches' progress, definitions as chains of steps, instances.

``GET /api/activities`` answers, as before, a page of ``items``: the
progress of every batch of messages written with the same ``activity``
label. Beside it, ``definitions``: every activity declared with
``mopq.activities.Activity`` as its chain of steps, each step with waiting,
running, done, failed and dead, throughput and p95 time (read from the
counters by ``collectors.activities``), and its instances by status; and
``instances``: up to 100 instances, stuck ones first. ``GET
/api/activities/<name>/instances/<key>`` is one instance: where it is,
each step's attempts and result, and its compensation.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import Field

from mopq.activities import instances
from mopq.activities.document import STATUSES
from mopq.collectors import activities as chains
from mopq.collectors import series
from mopq.dashboard import errors, openapi, stats_cache, store
from mopq.dashboard.endpoints import endpoint
from mopq.dashboard.openapi import INTEGER, MESSAGE_ID, NUMBER, STRING, ref
from mopq.dashboard.parameters import PagedByHundred, Strict, text_type

blueprint = Blueprint("activities_api", __name__)
errors.answer_in_json(blueprint)

ActivityName = text_type(r"[^$./\x00][^./\x00]*", "an activity's name: 1 to 200 characters "
                         "without '.', '/' or NUL, not starting with '$'", example="order")
ActivityKey = text_type(r"[^\x00]+", "an activity key: 1 to 512 characters without NUL",
                        max_length=512, example="order-42")


class InstancePath(Strict):
    name: ActivityName = Field(description="The activity's name.")
    key: ActivityKey = Field(description="The instance's activity key (given to start()).")


# Values that may be null, as JSON Schema 3.1 says it (a list of types).
TEXT, SECONDS = ({"type": [kind, "null"]} for kind in ("string", "number"))
MOMENT = {"type": ["string", "null"], "format": "date-time"}
FIGURES = {"type": "object",
           "required": ["queue", "waiting", "running", "done", "failed", "dead",
                        "done_per_second", "p95_seconds"],
           "properties": {"queue": STRING, "waiting": INTEGER, "running": INTEGER,
                          "done": INTEGER, "failed": INTEGER, "dead": INTEGER,
                          "done_per_second": NUMBER, "p95_seconds": SECONDS,
                          "workers": INTEGER, "warnings": {"type": "array", "items": STRING}}}
STEP_FIGURES = {"allOf": [FIGURES, {
    "type": "object", "required": ["name", "fan_out", "compensation"],
    "properties": {"name": STRING, "fan_out": {"type": "boolean"},
                   "compensation": {"anyOf": [FIGURES, {"type": "null"}]}}}]}
STATUS = {"type": "string", "enum": list(STATUSES)}
DEFINITION = {"type": "object", "required": ["name", "steps", "instances"],
              "properties": {"name": STRING, "defined_at": MOMENT,
                             "steps": {"type": "array", "items": STEP_FIGURES},
                             "instances": {"type": "object", "properties": {
                                 status: INTEGER for status in STATUSES}}}}
SUMMARY = {"type": "object",
           "required": ["id", "activity", "key", "status", "phase", "step", "attempts"],
           "properties": {"id": MESSAGE_ID, "activity": STRING, "key": STRING, "status": STATUS,
                          "phase": STRING, "step": TEXT, "state": TEXT,
                          "attempts": INTEGER, "started_at": MOMENT,
                          "updated_at": MOMENT, "finished_at": MOMENT,
                          "last_error": TEXT}}
RUN = {"type": "object", "properties": {
    "status": STRING, "attempts": INTEGER, "result": {}, "error": TEXT,
    "started_at": MOMENT, "done_at": MOMENT}}
STEP = {"type": "object", "required": ["index", "name", "queue", "status", "attempts"],
        "properties": {"index": INTEGER, "name": STRING, "queue": STRING,
                       "fan_out": {"type": "boolean"}, "status": STRING, "attempts": INTEGER,
                       "result": {}, "error": TEXT,
                       "errors": {"type": "array", "items": {}},
                       "started_at": MOMENT, "done_at": MOMENT,
                       "dead_at": MOMENT,
                       "children": {"type": "object", "properties": {
                           "total": INTEGER, "finished": INTEGER, "dead": INTEGER}},
                       "compensation": {"allOf": [RUN, {"type": "object", "properties": {
                           "queue": STRING}}]}}}
INSTANCE = {"allOf": [SUMMARY, {
    "type": "object", "required": ["steps"],
    "properties": {"input": {"type": "object"}, "result": {}, "failed_step": TEXT,
                   "steps": {"type": "array", "items": STEP}}}]}
ACTIVITIES = {"allOf": [openapi.page_of(ref("Activity")), {
    "type": "object", "required": ["definitions", "instances"],
    "properties": {"definitions": {"type": "array", "items": DEFINITION},
                   "instances": {"type": "array", "items": SUMMARY}}}]}


def overview(db: Any, page: int = 1, per_page: int = 100) -> dict[str, Any]:
    """What ``/api/activities`` answers (and the Activities page shows).

    ``items`` is a page of batches, paged as every list endpoint is.
    """
    batches = series.activities(db)
    start = (page - 1) * per_page
    return {"total": len(batches), "page": page, "per_page": per_page,
            "items": batches[start:start + per_page],
            "definitions": chains.definitions(db, stats=stats_cache.stats(db)),
            "instances": instances.listing(db)}


@endpoint(blueprint, "/api/activities", summary="Activities: batches' progress, definitions "
          "as chains of steps with their figures, and instances (stuck first)",
          query=PagedByHundred, ok=ACTIVITIES, safe=True, idempotent=True,
          ok_description="A page of batches (items), every definition, and up to "
                         f"{instances.MAX_LISTED} instances, stuck ones first.")
def activity_list(query: PagedByHundred) -> Any:
    return jsonify(overview(store.database(), query.page, query.per_page))


@endpoint(blueprint, "/api/activities/<name>/instances/<path:key>",
          summary="One activity instance: where it is, each step's attempts and result, "
                  "its compensation", path=InstancePath, errors=(404,), ok=INSTANCE,
          safe=True, idempotent=True, ok_description="The instance.",
          error_descriptions={404: "No instance of that activity with that key (never "
                                   "started, or finished longer ago than history keeps)."})
def activity_instance(name: str, key: str) -> Any:
    found = instances.find(store.database(), name, key)
    if found is None:
        return errors.error(404, f"no instance of activity {name!r} with key {key!r}: never "
                                 "started, or finished longer ago than history keeps.",
                            parameter="key")
    return jsonify(found)
