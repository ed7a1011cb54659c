"""The forked producer (handshake_viz.child): items, errors and the end, in order."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

import handshake_viz.wire  # noqa: F401  (its errors are HsvizErrors too)
from handshake_viz.child import Child
from handshake_viz.errors import HsvizError, NoSuchConnection, UsageError, WorkerError


def _every_error_class(base: type = HsvizError) -> list[type]:
    found = [base]
    for sub in base.__subclasses__():
        found += _every_error_class(sub)
    return found


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_every_project_error_survives_the_pipe(cls):
    # The child sends the error it raised on purpose; the parent raises it again.
    error = cls("cap.pcap", 7, 3) if cls is NoSuchConnection else cls("cap.pcap: something is wrong")
    again = pickle.loads(pickle.dumps(error, 5))
    assert type(again) is cls and str(again) == str(error) and again.args == error.args


def test_items_then_the_end():
    with Child("x", lambda: iter([1, {"a": (2, 3)}, "four"])) as items:
        assert list(items) == [1, {"a": (2, 3)}, "four"]


def test_an_error_comes_after_the_items_before_it():
    def produce():
        yield 1
        raise NoSuchConnection("x.pcap", 9, 2)

    got = []
    with pytest.raises(NoSuchConnection) as info, Child("x.pcap", produce) as items:
        for item in items:
            got.append(item)
    assert got == [1] and (info.value.conn, info.value.count) == (9, 2)
    assert str(info.value) == "x.pcap: no connection 9: the capture has 2 connections"


def test_a_child_that_dies_is_one_worker_error():
    def produce():
        yield 1
        os.kill(os.getpid(), signal.SIGKILL)
        yield 2

    with pytest.raises(WorkerError, match=r"^x\.pcap: the analysing process stopped early "
                                          r"\(killed by signal 9\)$"), Child("x.pcap", produce) as items:
        assert next(items) == 1
        next(items)


def test_ready_says_whether_taking_would_wait():
    import time

    def slow():
        time.sleep(0.3)
        yield "late"

    child = Child("x", slow)
    with child as items:
        assert not child.ready()
        deadline = time.monotonic() + 10
        while not child.ready() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.ready()
        assert list(items) == ["late"]


def test_leaving_early_kills_and_reaps_the_child():
    def forever():
        while True:
            yield 0

    with Child("x", forever) as items:
        next(items)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_usage_error_keeps_its_class():
    with pytest.raises(UsageError, match="^bad$"), Child("x", lambda: (_ for _ in ()).throw(UsageError("bad"))) as items:
        list(items)
