"""Each endpoint declared once: route, access, parameters, body, answers.

``@endpoint(...)`` registers a view with its Flask blueprint and records the
declaration; the request is then checked from the declared pydantic models
(``dashboard.parameters``) before the view runs, and ``/openapi.json``
(``dashboard.openapi``) is generated from the same records. So what the
server accepts and what the document says it accepts come from one place.

Why pydantic with this small adapter rather than spectree or flask-openapi3:
those answer a refused request with pydantic's own error list and a 422,
while mopq's contract is a 400 whose ``parameter`` names the one field that
was wrong, and query strings need checks a model cannot make (a key given
twice, a key shaped like an operator). pydantic does the checking and the
JSON Schema; this module only maps both onto Flask and OpenAPI 3.1.

Order of checks, as before: access first (401/403), then the path, the query
string and the body (400, 413), then the view.
"""

from __future__ import annotations

import functools
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel, TypeAdapter, ValidationError
from werkzeug.datastructures import MultiDict

from mopq.dashboard import auth, grants
from mopq.dashboard.parameters import Expect
from mopq.errors import InvalidInput

PUBLIC, READ, ADMIN = "public", "read", "admin"
# The HTTP queue's accesses: a producer or consumer token admitting the path's queue,
# or (OUTCOME) either of those or a dashboard reader.
PRODUCE, CONSUME, OUTCOME = grants.PRODUCER, grants.CONSUMER, "outcome"
MAX_BODY_BYTES = 64 * 1024   # an admin body: 1,000 ids take about 27 KB
MAX_BODY_DEPTH = 16          # objects and arrays inside one another
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


class BadParameter(ValueError):
    """A request parameter or body field was refused (answered 400)."""

    def __init__(self, parameter: str | None, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class BodyTooLarge(BadParameter):
    """A request body over the size limit (answered 413)."""


@dataclass(frozen=True)
class Endpoint:
    """One operation as declared: what it takes, who may call it, what it answers."""

    rule: str
    method: str
    name: str
    summary: str
    access: str
    tag: str
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: Any = None                    # a model, or an annotated union of models
    ok: dict[str, Any] = field(default_factory=dict)   # the 200 answer's schema
    ok_description: str = "The answer."
    ok_media: str = "application/json"
    ok_status: int = 200
    also_ok: tuple[int, ...] = ()       # other success statuses, with the same answer
    body_limit: int = 0                 # bytes; 0: MAX_BODY_BYTES
    body_depth: int = 0                 # nesting; 0: MAX_BODY_DEPTH
    body_optional: bool = False         # no body at all means the model's defaults
    errors: tuple[int, ...] = ()        # statuses besides 400/401/403/413/503
    safe: bool | None = None            # the talk's classes: no effect / a repeat is harmless
    idempotent: bool | None = None
    error_descriptions: Mapping[int, str] = field(default_factory=dict)
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # x- fields of the operation

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", self.rule)


REGISTRY: list[Endpoint] = []


def endpoint(blueprint: Blueprint, rule: str, method: str = "GET", *, summary: str,
             access: str = READ, tag: str | None = None, **declared: Any
             ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an operation and register its view, which gets the checked values.

    The view is called with the path's fields as keywords, plus ``query=`` and
    ``body=`` (model instances) when they are declared.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        spec = Endpoint(rule=rule, method=method, name=view.__name__, summary=summary,
                        access=access, tag=tag or access, **declared)
        REGISTRY.append(spec)
        # Built once here, not per request: the validators and the query's defaults.
        for model in (spec.path, spec.query, spec.body):
            if model is not None:
                _adapter(model)
        no_query = _defaults(spec.query)
        body_limit = spec.body_limit or MAX_BODY_BYTES
        body_depth = spec.body_depth or MAX_BODY_DEPTH

        @functools.wraps(view)
        def checked(**path: Any) -> Any:
            refusal = _access_refusal(spec.access)
            if refusal is not None:
                return refusal
            values: dict[str, Any] = {}
            if spec.path is not None:
                values.update(dict(parse(spec.path, path)))  # its fields, as checked
            refusal = _queue_refusal(spec.access, values.get("name"))
            if refusal is not None:
                return refusal
            args = request.args
            if spec.query is not None:
                values["query"] = no_query if no_query is not None and not args \
                    else parse_query(args, spec.query)
            elif args:
                parse_query(args, None)  # refuses it, naming the parameter
            if spec.body is not None and spec.body_optional and not request.get_data():
                values["body"] = spec.body()
            elif spec.body is not None:
                values["body"] = parse_body(spec.body, body_limit, body_depth)
            return view(**values)

        blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=checked,
                               methods=[method])
        return view

    return decorate


def _access_refusal(access: str) -> Any:
    if access == READ:
        return auth.refuse_reader()
    if access == ADMIN:
        return auth.refuse_admin()
    if access in (PRODUCE, CONSUME):
        return grants.refuse(access)
    return None


def _queue_refusal(access: str, queue: str | None) -> Any:
    if queue is None:
        return None
    if access in (PRODUCE, CONSUME):
        return grants.refuse_queue(access, queue)
    if access == OUTCOME:
        return grants.refuse_outcome(queue)
    return None


# -- checking ---------------------------------------------------------------------------------

def parse(model: Any, data: Any, where: str | None = None) -> Any:
    """``data`` checked against ``model``; a BadParameter naming the field otherwise."""
    try:
        return _adapter(model).validate_python(data)
    except ValidationError as error:
        raise _refusal(model, error, where) from None


_ADAPTERS: dict[int, tuple[Any, TypeAdapter]] = {}


def _adapter(model: Any) -> TypeAdapter:
    """The validator of a declaration, made once (keyed by identity: hashing an annotated
    union costs more than the lookup should)."""
    found = _ADAPTERS.get(id(model))
    if found is None:
        found = _ADAPTERS[id(model)] = (model, TypeAdapter(model))  # holds model: id stays
    return found[1]


def _defaults(model: type[BaseModel] | None) -> Any:
    """A query model's instance for an empty query string (None if it has required fields).

    Models are frozen, so one instance serves every request that gives no parameter.
    """
    if model is None:
        return None
    try:
        return _adapter(model).validate_python({})
    except ValidationError:
        return None


def models_in(declared: Any) -> list[type[BaseModel]]:
    """The models a declaration names: itself, or the members of an (annotated) union."""
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return [declared]
    found: list[type[BaseModel]] = []
    for inner in typing.get_args(declared):
        found += models_in(inner)
    return found


def _expectations(declared: Any) -> list[str]:
    metadata = getattr(declared, "__metadata__", ())
    return [mark.text for mark in metadata if isinstance(mark, Expect)]


def _refusal(model: Any, error: ValidationError, where: str | None) -> BadParameter:
    problems = error.errors(include_url=False)
    # An unknown key says the most (a typo, an operator); then the first problem.
    problem = next((p for p in problems if p["type"] == "extra_forbidden"), problems[0])
    location = [str(part) for part in problem["loc"]]
    union = not (isinstance(model, type) and issubclass(model, BaseModel))
    if union and location:  # the first location is the union's branch, not a field
        location = location[1:]
    name = next((part for part in location if not part.isdigit()), where or "body")
    value = problem.get("input")
    if union and problem["type"] in ("extra_forbidden", "missing") and _expectations(model):
        return BadParameter(name, f"{_expectations(model)[0]}.")
    if problem["type"] == "extra_forbidden":
        accepted = ", ".join(dict.fromkeys(f for m in models_in(model) for f in m.model_fields))
        kind = "parameter" if where == "query" else "field"
        return BadParameter(name, f"unknown {kind} {name!r}; accepted: {accepted or 'none'}.")
    if problem["type"] == "missing":
        return BadParameter(name, f"{name} is required.")
    library_error = problem.get("ctx", {}).get("error")
    if isinstance(library_error, InvalidInput):  # the library's own words say the most
        return BadParameter(name, str(library_error))
    expect = _expectation(model, name)
    if expect is None:
        return BadParameter(name, f"{name}: {problem['msg']}.")
    shown = repr(value[:60]) if isinstance(value, str) else json.dumps(value, default=str)[:60]
    if isinstance(value, Mapping):
        shown += " (an object; operators such as {\"$gt\": ...} are not accepted)"
    return BadParameter(name, f"{name} must be {expect}, got {shown}.")


def _expectation(model: Any, name: str) -> str | None:
    for candidate in models_in(model):
        info = candidate.model_fields.get(name)
        if info is not None:
            for mark in info.metadata:
                if isinstance(mark, Expect):
                    return mark.text
    return None


def _operator_key(key: str) -> bool:
    return any(mark in key for mark in ("[", "]", "$", "."))


def parse_query(args: MultiDict[str, str], model: type[BaseModel] | None) -> Any:
    """A query string checked against the endpoint's parameters (none if not declared)."""
    accepted = ", ".join(model.model_fields) if model is not None else "none"
    for key in args:
        if _operator_key(key):
            raise BadParameter(key, f"{key!r} is not a parameter; operators and nested keys "
                                    f"are not accepted. Accepted: {accepted}.")
        if len(args.getlist(key)) > 1:
            raise BadParameter(key, f"{key} is given more than once; give it once.")
    if model is None:
        if args:
            key = next(iter(args))
            raise BadParameter(key, f"unknown parameter {key!r}; accepted: none.")
        return None
    return parse(model, args.to_dict(), "query")


def nesting(raw: bytes) -> int:
    """How deeply objects and arrays nest in a JSON text, counted without parsing it.

    Why not parse and then look: Python's parser recurses, so about a thousand
    levels (ten kilobytes) end in a RecursionError instead of an answer.
    Brackets inside strings do not count.
    """
    deepest = depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b'""', raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def json_body(max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_BODY_DEPTH) -> Any:
    """The parsed JSON body of this request, after its size and depth limits."""
    if request.mimetype != "application/json":
        raise BadParameter("body", "send a JSON object with Content-Type: application/json.")
    raw = request.get_data(cache=True)
    if len(raw) > max_bytes:
        raise BodyTooLarge("body", f"the request body is too large ({len(raw)} bytes); at most "
                                   f"{max_bytes} are accepted here.")
    # A body with no more brackets than the limit cannot nest deeper: most bodies stop here.
    depth = 0 if raw.count(b"{") + raw.count(b"[") <= max_depth else nesting(raw)
    if depth > max_depth:
        raise BadParameter("body", f"the JSON body nests {depth} levels deep; at most "
                                   f"{max_depth} are accepted.")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadParameter("body", "the request body is not valid JSON.") from None
    if _SURROGATE_ESCAPE.search(raw) and not _well_formed(data):
        raise BadParameter("body", "the JSON body holds a lone surrogate escape (\\ud800 to "
                                   "\\udfff outside a pair), which is not text; send "
                                   "well-formed Unicode.")
    return data


# Only a \\uD800-\\uDFFF escape can put a lone surrogate in parsed JSON (raw bytes are UTF-8).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _well_formed(data: Any) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_body(model: Any, max_bytes: int = MAX_BODY_BYTES,
               max_depth: int = MAX_BODY_DEPTH) -> Any:
    data = json_body(max_bytes, max_depth)
    if not isinstance(data, dict):
        raise BadParameter("body", "the request body must be a JSON object "
                                   "(Content-Type: application/json).")
    return parse(model, data, "body")
