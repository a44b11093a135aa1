"""Bad input gets a clear exception and writes nothing."""

from __future__ import annotations

import datetime as dt
import random
import re

import bson
import pytest

from mopq import Envelope, InvalidBody, InvalidInput, InvalidQueueName, Queue


@pytest.fixture
def queue(db_name) -> Queue:
    return Queue("orders", max_body_bytes=10_000)


class Opaque:
    pass


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"in": value}
    return value


@pytest.mark.parametrize("body, says", [
    ("a string", "must be a dict"),
    ([1, 2], "must be a dict"),
    (None, "must be a dict"),
    ({"x": Opaque()}, "body.x is a Opaque"),
    ({"x": {1, 2}}, "is a set"),
    ({"x": b"bytes"}, "is a bytes"),
    ({1: "int key"}, "keys must be strings"),
    ({"$where": "1"}, "starts with '$'"),
    ({"n": float("inf")}, "no NaN or infinity"),
    ({"n": 2**70}, "64 bits"),
    ({"big": "x" * 20_000}, "the limit is 10000 bytes"),
    ({"deep": _nested(70)}, "deeper than 64 levels"),
    ({"list": [1, {"ok": [2, {"$gt": 1}]}]}, "body.list[1].ok[1].'$gt' starts with"),
    ({"text": "caf\u00e9 \ud83d"}, "body.text is not valid Unicode"),   # a lone surrogate
    ({"k\udc00": 1}, "is not valid Unicode"),
    ({"deep": ["fine \u00e9", {"x": "\udfff"}]}, "body.deep[1].x is not valid Unicode"),
])
def test_bad_bodies_are_refused_and_nothing_is_written(queue, db, body, says):
    with pytest.raises(InvalidBody, match=re.escape(says)):
        queue.write(body)
    with pytest.raises(InvalidBody):
        queue.write_many([{"fine": 1}, body])
    assert db.messages.count_documents({}) == 0


@pytest.mark.parametrize("name, says", [
    ("", "non-empty"), (None, "non-empty"), (7, "non-empty"),
    ("q" * 121, "the limit is 120"), ("a$b", "'\\$', '/' or NUL"),
    ("a\x00b", "'\\$', '/' or NUL"), ("a/b", "'\\$', '/' or NUL"),
    ("q\ud800", "not valid Unicode"),
])
def test_bad_queue_names_are_refused(db_name, db, name, says):
    with pytest.raises(InvalidQueueName, match=says):
        Queue(name)
    assert db.messages.count_documents({}) == 0


def test_a_queue_name_of_120_characters_is_fine(db_name):
    Queue("q" * 120).write({"ok": True})


@pytest.mark.parametrize("call, says", [
    (lambda q: q.write({}, delay=-1), "delay must not be negative"),
    (lambda q: q.write({}, expire=-5), "expire must not be negative"),
    (lambda q: q.write({}, delay="soon"), "delay must be a number"),
    (lambda q: q.write({}, priority=1.5), "priority must be a whole number"),
    (lambda q: q.write({}, routing_key=""), "routing_key must be a non-empty string"),
    (lambda q: q.write({}, dedupe_key=42), "dedupe_key must be a non-empty string"),
    (lambda q: q.write({}, routing_key="r\ud800"), "routing_key .* is not valid Unicode"),
    (lambda q: q.write_once("k\udbff", {}), "key .* is not valid Unicode"),
    (lambda q: q.read(visibility_timeout=-1), "visibility_timeout must not be negative"),
    (lambda q: q.read(visibility_timeout=0), "more than 0"),
    (lambda q: q.read(limit=0), "limit must be a whole number from 1"),
    (lambda q: q.read(limit=10_000), "limit must be a whole number from 1 to 1000"),
    (lambda q: q.write_many([{}], routing_key=""), "routing_key must be a non-empty string"),
    (lambda q: q.write_many([Envelope({}, priority=1), Envelope({}, priority=True)]),
     "priority must be a whole number"),
    (lambda q: q.write_many([Envelope({}, delay=[1])]), "delay must be a number"),
    (lambda q: q.write_many([Envelope({}, dedupe_key="a"), Envelope({}, dedupe_key="")]),
     "dedupe_key must be a non-empty string"),
])
def test_bad_arguments_are_refused(queue, db, call, says):
    with pytest.raises(InvalidInput, match=says):
        call(queue)
    assert db.messages.count_documents({}) == 0


def test_unknown_keywords_are_refused(queue, db):
    with pytest.raises(TypeError, match="unexpected keyword argument 'prioirty'"):
        queue.write({}, prioirty=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'timeout'"):
        queue.read(timeout=3)
    assert db.messages.count_documents({}) == 0


def test_bad_arguments_to_a_claimed_message_are_refused(queue, db):
    queue.write({"n": 1})
    [message] = queue.read()
    with pytest.raises(InvalidInput, match="from 0 to 1"):
        message.progress(1.5)
    with pytest.raises(InvalidInput, match="must not be negative"):
        message.extend(-1)
    with pytest.raises(InvalidInput, match="takes a string"):
        message.log(42)
    document = db.messages.find_one({"_id": message.id})
    assert "progress" not in document and "log" not in document


def test_a_body_near_the_size_limit_is_measured_exactly(queue, db):
    """The quick size bound may only let through what is surely small; the rest is encoded."""
    wrapper = len(bson.encode({"body": {"big": ""}}))
    fits = {"big": "x" * (10_000 - wrapper)}  # exactly the limit
    queue.write(fits)
    with pytest.raises(InvalidBody, match="10001 bytes"):
        queue.write({"big": "x" * (10_001 - wrapper)})
    with pytest.raises(InvalidBody, match="the limit is 10000 bytes"):
        queue.write({"big": ("é" * 5_000, ("tuple", "inside"))})  # not plain: checked the slow way
    assert db.messages.count_documents({}) == 1


def test_the_quick_size_bound_is_never_below_the_encoded_size():
    """Bodies the bound lets through unencoded must really fit: it may only overestimate.

    Non-ASCII text takes the checked path (it must be well-formed Unicode), so
    a body holding some has no quick bound; enough of them are pure ASCII.
    """
    from mopq.validation import _plain_size

    rng = random.Random(20261126)
    texts = ["", "a", "é", "€uro", "\U0001f600" * 3, "x" * 90]
    scalars = [lambda: rng.choice(texts)[:rng.randint(0, 90)],
               lambda: rng.randint(-2**63, 2**63 - 1), lambda: rng.random() * 1e9,
               lambda: rng.choice([True, False, None]),
               lambda: dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]

    def value(depth: int):
        roll = rng.random()
        if depth < 4 and roll < 0.2:
            return {rng.choice(["k", "é", "key" * rng.randint(1, 5)]) + str(i): value(depth + 1)
                    for i in range(rng.randint(0, 6))}
        if depth < 4 and roll < 0.35:
            return [value(depth + 1) for _ in range(rng.randint(0, 12))]
        return rng.choice(scalars)()

    quick = 0
    for _ in range(3000):
        body = {f"f{i}": value(1) for i in range(rng.randint(0, 8))}
        bound = _plain_size(body, 0)
        if bound >= 0:
            quick += 1
            assert bound >= len(bson.encode(body)), body
    assert quick > 500
