#!/usr/bin/env python3
"""Remake the kernel-event fixtures of this directory (needs root and tracefs):

    sudo python tests/data/kernel/make_fixtures.py

For each lesson NAME it runs ``hsviz demo NAME`` with kernel events and keeps:

* ``NAME.pcap``, ``NAME.calls.jsonl``, ``NAME.kernel.jsonl``: what the demo wrote;
* ``NAME.trace``: the instance's ``trace_pipe`` text as hsviz read it, untouched;
* ``NAME.sync.json``: the wall-clock brackets of the clock markers (the one thing
  ``NAME.kernel.jsonl`` is made from that the text does not hold).

``lost.trace`` is ``trace_pipe`` text with ``[LOST N EVENTS]`` markers: a 4 KiB ring
buffer per CPU filled by a loopback burst while nobody reads it, then read.
``truncated.trace`` is ``echo.trace`` cut in the middle of its last line, as a reader
stopped mid-write leaves it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from handshake_viz import demo  # noqa: E402
from handshake_viz.kernelio import KernelRecorder  # noqa: E402

LESSONS = ("echo", "backlog", "refused", "half-close", "time-wait", "reset")


def _keep_raw(name: str) -> None:
    """Make the next recorder's stop() also save its raw text and brackets."""
    real_stop = KernelRecorder.stop

    def stop(self: KernelRecorder):  # type: ignore[no-untyped-def]
        log = real_stop(self)
        assert self._raw is not None
        self._raw.seek(0)
        (HERE / f"{name}.trace").write_bytes(self._raw.read())
        (HERE / f"{name}.sync.json").write_text(json.dumps(
            {"split": self._split, "brackets": {str(k): list(v) for k, v in self._brackets.items()}}) + "\n")
        KernelRecorder.stop = real_stop  # type: ignore[method-assign]
        return log

    KernelRecorder.stop = stop  # type: ignore[method-assign]


def lessons() -> None:
    for name in LESSONS:
        _keep_raw(name)
        result = demo.run_scenario(name, HERE, live=True, draw=False)
        assert result.kernel_path is not None, result.warnings
        print(f"{name}: {len(result.trace.connections)} connections, kernel events in {result.kernel_path}")


def lost() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    rec = KernelRecorder(port, buffer_kb=4)
    rec.start()
    # Stop the reader: the ring must overflow before anyone reads it.
    rec._wake()
    assert rec._reader is not None
    rec._reader.join()

    def serve() -> None:
        for _ in range(200):
            c, _ = srv.accept()
            c.recv(10)
            c.close()

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(200):
        c = socket.create_connection(("127.0.0.1", port))
        c.send(b"x")
        c.close()
    t.join()
    time.sleep(0.1)
    assert rec._pipe is not None
    chunks = []
    while True:
        try:
            chunk = os.read(rec._pipe, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    rec.close()
    text = b"".join(chunks)
    assert b"LOST" in text, "no overrun: make the burst longer"
    (HERE / "lost.trace").write_bytes(text)
    print(f"lost.trace: {text.count(b'LOST')} lost-events markers")


def truncated() -> None:
    text = (HERE / "echo.trace").read_bytes()
    last = text.rstrip(b"\n").rfind(b"\n")
    (HERE / "truncated.trace").write_bytes(text[: last + 1 + (len(text) - last) // 2])


if __name__ == "__main__":
    lessons()
    lost()
    truncated()
