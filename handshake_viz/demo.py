"""``hsviz demo``: run a lesson live, capture it, record its calls, save it, draw it.

The lessons themselves (small servers and clients) are in
:mod:`handshake_viz.scenarios`; this module is the runner.  With root (or
CAP_NET_RAW) :func:`run_scenario` captures live: the scenario binds its port,
asks for the capture on that port and waits until it is ready, plays, a short
grace period lets the last ACK arrive, and the capture stops.  It then writes
``NAME.pcap``, ``NAME.calls.jsonl`` (the calls the scenario's Recorder logged)
and ``NAME.png``, and (by default, when root and tracefs allow it) the kernel's own
account of the port, ``NAME.kernel.jsonl``.  Without the privilege it opens the
shipped ``captures/NAME.pcap`` instead and says so.

What the files show is what ``hsviz analyze`` and ``hsviz plot`` show: the
result's Trace comes from :func:`handshake_viz.pipeline.load`, its picture from
:mod:`handshake_viz.draw`, its text from :func:`handshake_viz.report.trace_lines`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from handshake_viz.errors import CaptureError, CaptureFileError, UsageError, os_error
from handshake_viz.model import Call, CallKind, ConnectionSummary, Datagram, Segment
from handshake_viz.pipeline import Trace
from handshake_viz.recorder import SOCKET_TIMEOUT, Recorder
from handshake_viz.scenarios import BACKLOG_ACCEPT_DELAY, BACKLOG_CLIENTS, DEFAULT_SCENARIO, SCENARIOS, Scenario

__all__ = [
    "BACKLOG_ACCEPT_DELAY",
    "BACKLOG_CLIENTS",
    "DEFAULT_SCENARIO",
    "EXPECTED_LABELS_FILE",
    "SCENARIOS",
    "DemoResult",
    "can_capture",
    "dump_expected_labels",
    "expected_labels",
    "draw_lesson",
    "format_result",
    "run_scenario",
    "scenario",
    "shipped_captures_dir",
]

#: Seconds to wait after a scenario for the last segments (the final ACK) to be captured.
GRACE = 0.1
EXPECTED_LABELS_FILE = "expected-labels.json"


def can_capture() -> bool:
    """Whether this process may open a packet socket: CAP_NET_RAW in its effective set.

    Root normally has it; root in a container started without it does not, so the
    capability is what is checked (euid 0 decides only where /proc cannot tell).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 13))  # CAP_NET_RAW
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


class _Capture:
    """A :class:`~handshake_viz.capture.LiveCapture` (TCP, or UDP for the UDP lesson)
    run in a thread; ``start`` returns once it is ready."""

    def __init__(self, port: int, output: Path, *, udp: bool) -> None:
        from handshake_viz.capture import LiveCapture

        self.live = LiveCapture(port, output=output, udp=udp, handle_signals=False)
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def _run(self) -> None:
        try:
            self.live.run()
        except BaseException as exc:  # noqa: BLE001 - handed to start()/stop()
            self._error.append(exc)
            self.live.ready.set()  # wake start()

    def start(self) -> None:
        self._thread.start()
        if not self.live.ready.wait(SOCKET_TIMEOUT) or self._error:
            self.stop()
            if self._error:
                raise self._error[0]
            raise CaptureError("demo: the capture did not become ready")

    def stop(self) -> None:
        self.live.stop()
        self._thread.join(SOCKET_TIMEOUT)
        if self._error:
            raise self._error[0]


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a scenario produced: its files, its Trace, and notes for the reader."""

    scenario: str
    lesson: str
    live: bool  # captured now (True) or read from the shipped captures/ (False)
    pcap: Path
    calls_path: Path
    png: Path | None  # None when no diagram was drawn
    trace: Trace
    notes: tuple[str, ...] = ()
    kernel_path: Path | None = None  # NAME.kernel.jsonl, when kernel events were recorded
    warnings: tuple[str, ...] = ()  # e.g. why kernel events could not be recorded

    @property
    def segments(self) -> tuple[Segment, ...]:
        """Every TCP segment, in capture order."""
        return tuple(sorted((s for c in self.trace.connections for s in c.segments), key=lambda s: s.frame))

    @property
    def summaries(self) -> tuple[ConnectionSummary, ...]:
        return tuple(c.summary for c in self.trace.connections)

    @property
    def datagrams(self) -> tuple[Datagram, ...]:
        return tuple(sorted((d for f in self.trace.flows for d in f.datagrams), key=lambda d: d.frame))

    @property
    def calls(self) -> tuple[Call, ...]:
        """Every recorded call, aligned to the segments and datagrams."""
        return self.trace.calls

    def labels(self) -> dict[int, list[str]]:
        """Each connection's segment labels in capture order."""
        return {c.conn: [s.label.value for s in c.segments] for c in self.trace.connections}


# ========================================================================================
# Running a scenario
# ========================================================================================


def shipped_captures_dir() -> Path:
    """The repository's ``captures/`` directory (next to the package)."""
    return Path(__file__).resolve().parent.parent / "captures"


def scenario(name: str) -> Scenario:
    """The scenario called ``name`` (UsageError naming the others when there is none)."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise UsageError(f"unknown demo scenario {name!r} (have: {', '.join(SCENARIOS)})") from None


def run_scenario(name: str, out_dir: str | os.PathLike[str] = ".", *, live: bool | None = None,
                 draw: bool = True, kernel: bool | None = None) -> DemoResult:
    """Run scenario ``name`` live and write ``NAME.pcap``, ``.calls.jsonl``, ``.png`` to ``out_dir``.

    ``live=None`` captures when :func:`can_capture`, else reads the shipped
    ``captures/NAME.pcap`` (nothing is written then); ``live=True`` insists
    (PermissionDeniedError without the privilege), ``live=False`` never captures.
    ``draw=False`` skips the PNG (``DemoResult.png`` is None).  ``kernel`` records the
    kernel's events too (``NAME.kernel.jsonl``): None when they can be had (else one
    line in ``warnings`` says why not), False never.  Raises UsageError for an
    unknown name, OutputError for an unusable ``out_dir``.
    """
    lesson = scenario(name)
    if live is None:
        live = can_capture()
    if not live:
        return _open_shipped(lesson)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, out, "create the output directory") from None
    pcap = out / f"{name}.pcap"
    rec = Recorder()
    captures: list[_Capture] = []
    recorders: list[Any] = []
    warnings: list[str] = []
    from handshake_viz.kernel import kernel_path_for
    from handshake_viz.kernelio import remove_stale

    kernel_path = kernel_path_for(pcap)
    remove_stale(pcap)

    def start_capture(port: int) -> None:
        if kernel is not False and lesson.transport == "tcp":
            recorders.extend(_kernel_recorder(port, warnings))
        cap = _Capture(port, pcap, udp=lesson.transport == "udp")
        captures.append(cap)
        cap.start()

    try:
        try:
            notes = lesson.run(rec, start_capture)
            time.sleep(GRACE)
        finally:
            for cap in captures:
                cap.stop()
        if not captures:
            raise CaptureError(f"demo {name}: the scenario never started its capture")
        written = _write_kernel(recorders, kernel_path, warnings)
    finally:
        for r in recorders:
            r.close()
    from handshake_viz.trace import calls_path_for, write_calls_jsonl

    calls = rec.calls
    calls_path = Path(calls_path_for(pcap))
    write_calls_jsonl(calls, calls_path)
    result = _result(lesson, True, pcap, calls_path, calls, notes, out / f"{name}.png" if draw else None,
                     kernel=written if written is not None else False)
    return replace(result, kernel_path=written, warnings=tuple(warnings))


def _kernel_recorder(port: int, warnings: list[str]) -> list[Any]:
    """A started recorder for ``port``, or none (and one line why) when it cannot be had."""
    from handshake_viz.errors import KernelEventsUnavailable
    from handshake_viz.kernelio import KernelRecorder

    try:
        recorder = KernelRecorder(port).start()
    except KernelEventsUnavailable as exc:
        warnings.append(f"{exc}; capturing without them")
        return []
    warnings.extend(f"warning: {w}" for w in recorder.warnings)
    return [recorder]


def _write_kernel(recorders: list[Any], path: Path, warnings: list[str]) -> Path | None:
    from handshake_viz.errors import KernelEventsUnavailable
    from handshake_viz.kernelio import write_kernel_jsonl

    if not recorders:
        return None
    try:
        log = recorders[0].stop()
    except KernelEventsUnavailable as exc:
        warnings.append(f"warning: {exc}")
        return None
    if log.lost:
        warnings.append(f"warning: the kernel's trace buffer overflowed: {log.lost} events lost")
    return write_kernel_jsonl(log, path)


def _open_shipped(lesson: Scenario) -> DemoResult:
    from handshake_viz.trace import calls_path_for

    base = shipped_captures_dir()
    pcap = base / f"{lesson.name}.pcap"
    if not pcap.exists():
        raise CaptureFileError(f"{pcap}: no shipped capture for {lesson.name!r} (and capturing "
                               "needs root or CAP_NET_RAW: try sudo)")
    calls_path = Path(calls_path_for(pcap))
    png = base / f"{lesson.name}.png"
    result = _result(lesson, False, pcap, calls_path, None, [], None)
    return replace(result, png=png if png.exists() else None)


def _result(lesson: Scenario, live: bool, pcap: Path, calls_path: Path, calls: Sequence[Call] | None,
            notes: Sequence[str], png: Path | None, *, kernel: Path | bool | None = None) -> DemoResult:
    """The result of a run: its Trace (``kernel``: the kernel events file, False for none,
    None for whatever lies beside the capture), notes and, with ``png``, its diagram."""
    from handshake_viz import pipeline

    trace = pipeline.load(pcap, calls=calls if calls is not None else
                          (calls_path if calls_path.exists() else None),
                          kernel=kernel)
    result = DemoResult(lesson.name, lesson.lesson, live, pcap, calls_path, None, trace, tuple(notes))
    result = replace(result, notes=tuple(notes) + tuple(_lesson_notes(lesson, result)))
    if png is not None:
        result = replace(result, png=draw_lesson(result, png))
    return result


def draw_lesson(result: DemoResult, png: Path) -> Path:
    """The lesson's diagram, every connection and flow on one figure, as ``hsviz plot
    FILE --all`` draws it (with the lesson's own time mode)."""
    from handshake_viz import draw

    lesson = scenario(result.scenario)
    return draw.save_figure(draw.render_trace(result.trace, time=lesson.time, max_rows=0), png)  # type: ignore[arg-type]


def _lesson_notes(scenario: Scenario, result: DemoResult) -> list[str]:
    """Numbers measured from the result that make the lesson (e.g. how late accept() came)."""
    notes: list[str] = []
    if scenario.name == "backlog":
        for s in result.summaries:
            acks = [seg for seg in result.segments if seg.conn == s.conn and seg.label.value == "ACK"]
            accept = _accept_of(result.calls, s)
            if acks and accept is not None:
                notes.append(f"conn {s.conn}: accept() returned {(accept.end - acks[0].ts) * 1000:.1f} ms "
                             "after the handshake's final ACK")
    if scenario.name == "time-wait" and result.summaries:
        first = result.summaries[0]
        notes.append(f"conn {first.conn}: server ends in {first.server_state.value}, "
                     f"client in {first.client_state.value}")
    return notes


def _accept_of(calls: Iterable[Call], summary: ConnectionSummary) -> Call | None:
    for c in calls:
        if c.kind is CallKind.ACCEPT and c.ret is not None and c.ret >= 0 and c.remote == summary.client:
            return c
    return None


# ========================================================================================
# Text output
# ========================================================================================


def format_result(result: DemoResult) -> list[str]:
    """The text ladder of a result (the same as ``hsviz analyze`` of its files), under a
    line naming the lesson, with its notes after."""
    from handshake_viz import report

    lines = [f"demo {result.scenario}: {result.lesson}", ""]
    lines += report.trace_lines(result.trace)
    lines += [f"note: {note}" for note in result.notes]
    return lines


def expected_labels(results: Iterable[DemoResult]) -> dict[str, Any]:
    """The ``captures/expected-labels.json`` content: per scenario and connection, the
    segment labels in order, Zeek's conn_state and both sides' final states."""
    out: dict[str, Any] = {}
    for r in results:
        labels = r.labels()
        out[r.scenario] = {
            "connections": len(r.summaries),
            "datagrams": len(r.datagrams),
            "labels": [labels[s.conn] for s in r.summaries],
            "conn_state": [s.conn_state for s in r.summaries],
            "final_states": [[s.client_state.value, s.server_state.value] for s in r.summaries],
        }
    return out


def dump_expected_labels(expected: dict[str, Any]) -> str:
    """JSON text with one scenario per line (diffs stay readable)."""
    body = ",\n".join(f" {json.dumps(name)}: {json.dumps(value)}" for name, value in expected.items())
    return "{\n" + body + "\n}\n"


