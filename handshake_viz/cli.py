"""The ``hsviz`` command: argument parsing and output formatting only.

Every subcommand calls the library and prints what it returns.  Errors the
library raises on purpose (``HsvizError``) become one line on stderr and exit
status 2; nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from handshake_viz import report
from handshake_viz.errors import HsvizError, NoSuchConnection, UsageError
from handshake_viz.text import safe_text

__all__ = ["main", "build_parser"]

PROG = "hsviz"

_Registrar = Callable[[argparse._SubParsersAction], None]


def _subcommand(name: str, *, help: str, description: str, usage: str | None = None, file: bool = True
                ) -> Callable[[Callable[[argparse.ArgumentParser], None]], _Registrar]:
    """Declares ``hsviz NAME``: the decorated function adds the subcommand's own options
    (and its ``func``) to the parser made here, and becomes the registrar that
    ``build_parser`` calls.  ``help`` is its line in ``hsviz --help``, ``description``
    what ``hsviz NAME --help`` says first.  With ``file`` the capture file is the first
    argument, as in every command that reads one."""

    def declare(options: Callable[[argparse.ArgumentParser], None]) -> _Registrar:
        def register(sub: argparse._SubParsersAction) -> None:
            p = sub.add_parser(name, help=help, description=description, usage=usage)
            if file:
                p.add_argument("file", help="capture file (pcap or pcapng)")
            options(p)

        return register

    return declare


# ----------------------------------------------------------------------------------------
# analyze
# ----------------------------------------------------------------------------------------


@_subcommand("analyze",
             help="label every TCP segment of a capture and summarise each connection",
             description="Decode a pcap/pcapng file, run the TCP state machine and print a text "
             "ladder per connection (or JSON Lines with --jsonl).")
def _add_analyze(p: argparse.ArgumentParser) -> None:
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--jsonl", action="store_true", help="print JSON Lines (schema in README)")
    fmt.add_argument("--summary", action="store_true", help="print only one line per connection")
    p.add_argument("--conn", type=int, metavar="N", help="only connection N (0-based, as tcp.stream)")
    p.add_argument("-j", "--jobs", type=int, choices=(1, 2), metavar="N",
                   help="processes: 1, or 2 to decode and track in one while the other "
                   "writes JSON (default: 2 for --jsonl on captures over 16 MB when 2 CPUs "
                   "are free and the tracker runs on pure Python, else 1; the output is "
                   "the same)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl "
                   "(default: FILE's .calls.jsonl beside it, when present)")
    _add_explain_options(p, explain_flag=True)
    _add_verify_option(p)
    p.set_defaults(func=_cmd_analyze)


def _add_verify_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verify-checksums", action="store_true",
                   help="verify every TCP checksum: a segment that fails is flagged bad-checksum, "
                   "or checksum-offloaded when the sending host left the sum to its network card "
                   "(every loopback capture), and the Zeek-style summary ignores it as Zeek does "
                   "(off by default: it takes time, and loopback captures would all fail)")


def _add_explain_options(p: argparse.ArgumentParser, *, explain_flag: bool) -> None:
    if explain_flag:
        p.add_argument("--explain", action="store_true",
                       help="after each connection's ladder, what happened in words (as hsviz explain); "
                       "without a call log the calls are inferred and shown in the ladder")
    p.add_argument("--lang", choices=("en", "zh"), default=None,
                   help="language of the explanation (default: from the locale, LANG/LC_ALL/LANGUAGE)")


def _cmd_analyze(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.analyze import Mode, analyze_file

    if args.conn is not None and args.conn < 0:
        raise UsageError(f"--conn {args.conn}: connection numbers start at 0")
    if args.explain and (args.jsonl or args.summary):
        raise UsageError("--explain: goes with the text ladder, not --jsonl or --summary "
                         "(hsviz explain --json gives the explanation as data)")
    calls_file = _calls_file(args)
    if args.explain:
        return _analyze_explained(args, calls_file, out, err)
    if calls_file is not None or _kernel_file(args) is not None:
        return _analyze_with_calls(args, calls_file, out, err)
    mode: Mode = "jsonl" if args.jsonl else "summary" if args.summary else "ladder"
    from handshake_viz.progress import Progress

    stdout = _TextAndBytes.of(out)
    analyze_file(args.file, mode, want=args.conn, jobs=args.jobs,
                 write=out.write if stdout is None else stdout.write,
                 write_bytes=None if stdout is None else stdout.write_bytes,
                 warn=lambda w: _warn([w], err), verify_checksums=args.verify_checksums,
                 progress=Progress.on(err, out))
    return 0


class _TextAndBytes:
    """A text stream and its UTF-8 byte stream underneath, written in order: text
    written before bytes is flushed first.  (The ladder is made as UTF-8; writing it
    as bytes saves decoding and encoding every line.)"""

    def __init__(self, out: TextIO, buffer: Any) -> None:
        self.out, self.buffer, self.pending = out, buffer, False

    @classmethod
    def of(cls, out: TextIO) -> _TextAndBytes | None:
        """For ``out`` when it is UTF-8 text over a byte buffer, else None."""
        import codecs

        buffer = getattr(out, "buffer", None)
        encoding = getattr(out, "encoding", None)
        if buffer is None or not encoding or codecs.lookup(encoding).name != "utf-8":
            return None
        return cls(out, buffer)

    def write(self, text: str) -> None:
        self.pending = True
        self.out.write(text)

    def write_bytes(self, data: bytes) -> None:
        if self.pending:
            self.out.flush()
            self.pending = False
        self.buffer.write(data)


def _warn(warnings: Sequence[str], err: TextIO) -> None:
    """What decoding noticed (a cut-off record ...), one line each after the output,
    escaped: warnings quote file names and file contents."""
    err.writelines(f"{PROG}: warning: {safe_text(w)}\n" for w in warnings)


def _calls_file(args: argparse.Namespace) -> Path | None:
    """--calls FILE, else FILE.calls.jsonl beside the capture when it exists."""
    from handshake_viz.pipeline import calls_file_for

    return calls_file_for(args.file, args.calls)


def _kernel_file(args: argparse.Namespace) -> Path | None:
    """FILE.kernel.jsonl beside the capture when it exists (hsviz capture --kernel)."""
    from handshake_viz.pipeline import kernel_file_for

    return kernel_file_for(args.file)


def _analyze_with_calls(args: argparse.Namespace, calls_file: Path | None, out: TextIO, err: TextIO) -> int:
    """`hsviz analyze` with socket calls or kernel events: each connection's segments and
    calls in one time-ordered ladder (or JSONL stream), then each UDP flow's, with the
    kernel's account where it was recorded.  Alignment and the kernel join need whole
    connections, so this path holds the selected connections in memory; without calls
    and kernel events analyze streams."""
    from handshake_viz.pipeline import load

    trace = load(args.file, calls=calls_file, conn=args.conn, infer=False,
                 verify_checksums=args.verify_checksums)
    mode = "jsonl" if args.jsonl else "summary" if args.summary else "ladder"
    out.writelines(line + "\n" for line in report.trace_lines(trace, mode, conn=args.conn))
    _warn(trace.warnings, err)
    return 0


def _analyze_explained(args: argparse.Namespace, calls_file: Path | None, out: TextIO, err: TextIO) -> int:
    """`hsviz analyze --explain`: the ladder, and after each connection its explanation."""
    from handshake_viz.explain import explain_connection
    from handshake_viz.i18n import default_lang
    from handshake_viz.pipeline import load

    lang = args.lang or default_lang()
    trace = load(args.file, calls=calls_file, conn=args.conn, verify_checksums=args.verify_checksums)
    out.writelines(line + "\n" for line in report.trace_lines(
        trace, "ladder", conn=args.conn,
        explain=lambda c: explain_connection(c, others=trace.loose_calls).lines(lang)))
    _warn(trace.warnings, err)
    return 0


# ----------------------------------------------------------------------------------------
# explain
# ----------------------------------------------------------------------------------------


@_subcommand("explain",
             help="what happened on each connection, in words: a numbered story and findings",
             description="Tell each connection's story in plain words, every sentence citing its frames "
             "(#3) and socket calls (connect() @0.000 ms): who opened, the ISNs and acknowledgements, "
             "which call waited for what and how long, who closed first and why that side is in "
             "TIME_WAIT; then how long each call took and what it waited for; then findings (refused, "
             "reset, address in use, half-close, late accept(), Nagle and delayed ACK, zero window, "
             "retransmissions, missed segments, Fast Open, keep-alives, idle...), each with its evidence "
             "and usual cause. Calls come from FILE.calls.jsonl beside the capture (or --calls); without "
             "them they are inferred from the segments, and the story says so.")
def _add_explain(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--conn", type=int, metavar="N", help="only connection N (default: all)")
    which.add_argument("--all", action="store_true", help="every connection (the default)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON (schema in README)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl")
    _add_explain_options(p, explain_flag=False)
    _add_verify_option(p)
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import json

    from handshake_viz.explain import explain_trace
    from handshake_viz.i18n import default_lang
    from handshake_viz.pipeline import load

    if args.conn is not None and args.conn < 0:
        raise UsageError(f"--conn {args.conn}: connection numbers start at 0")
    lang = args.lang or default_lang()
    trace = load(args.file, calls=args.calls, conn=args.conn, verify_checksums=args.verify_checksums)
    explained = explain_trace(trace, conn=args.conn)
    if args.json:
        doc = {"type": "explain", "file": str(args.file), "lang": lang,
               "connections": [e.to_json(lang) for e in explained.connections],
               "findings": [f.to_json(lang) for f in explained.findings]}
        out.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    else:
        if not explained.connections and not explained.findings:
            out.write(f"{args.file}: no TCP connection to explain\n")
        out.writelines(line + "\n" for line in explained.lines(lang))
    _warn(trace.warnings, err)
    return 0


# ----------------------------------------------------------------------------------------
# capture and replay: the live view (the logic is in handshake_viz.capture)
# ----------------------------------------------------------------------------------------


class _LiveView:
    """Prints each tracked segment as one ``analyze`` ladder line the moment it arrives.

    Times are relative to the connection's first segment, as in ``analyze``.  Live
    connections interleave, so a connection header is printed whenever a line's
    connection differs from the previous line's.  The status line (stderr, only on
    a terminal) is erased before each segment line and redrawn on the next tick.
    """

    def __init__(self, tracking: Any, out: TextIO, err: TextIO, *, status: bool) -> None:
        self.tracking = tracking
        self.out = out
        self.err = err
        self.status_enabled = status
        self._status_shown = False
        self._status_text = ""
        self._last: tuple[str, int] = ("", -1)
        self._starts: dict[tuple[str, int], float] = {}

    def segment(self, seg: Any) -> None:
        summary = self.tracking.tracker.summary
        self._line(("conn", seg.conn), seg.ts, lambda: report.connection_header(summary(seg.conn)),
                   lambda t0: report.format_segment(seg, t0))

    def datagram(self, d: Any) -> None:
        summary = self.tracking.flows.summary
        self._line(("flow", d.flow), d.ts, lambda: report.flow_header(summary(d.flow)),
                   lambda t0: report.format_datagram(d, t0))

    def _line(self, key: tuple[str, int], ts: float, header: Callable[[], str],
              line: Callable[[float], str]) -> None:
        """One ladder line of connection or flow ``key``, timed from that key's first
        line; its header first when the previous line was another's."""
        self.clear_status()
        if key != self._last:
            self._last = key
            self.out.write(header() + "\n")
        self.out.write(line(self._starts.setdefault(key, ts)) + "\n")
        self.out.flush()

    def status(self, stats: Any) -> None:
        if not self.status_enabled:
            return
        n = self.tracking.tracker.connection_count
        text = (f"{stats.packets} packet{'s' if stats.packets != 1 else ''}, {n} connection"
                f"{'s' if n != 1 else ''} ({self.tracking.completed} closed)")
        if stats.dropped:
            text += f", {stats.dropped} dropped by the kernel"
        if not self._status_shown or text != self._status_text:
            self.err.write(f"\r\x1b[K{text}")
            self.err.flush()
            self._status_shown = True
            self._status_text = text

    def clear_status(self) -> None:
        if self._status_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._status_shown = False

    def summaries(self) -> None:
        summaries, flows = self.tracking.summaries(), self.tracking.flows.summaries()
        if summaries or flows:
            self.out.write("\n")
        for s in summaries:
            self.out.write(report.format_summary(s) + "\n")
        for f in flows:
            self.out.write(report.format_flow_summary(f) + "\n")
        self.out.flush()


@_subcommand("capture",
             help="capture TCP on a port live, print each segment as it arrives, write a pcap; "
             "optionally trace a command's socket calls (-- CMD) or running processes (--trace-pid)",
             usage="%(prog)s --port PORT [options] [-- CMD [ARGS ...] | --trace-pid PID ...]",
             description="Capture TCP to or from PORT (needs root or CAP_NET_RAW), print one ladder "
             "line per segment as it arrives, write every frame to a pcap, and on exit print each "
             "connection's summary and the pcap's path. Stops on Ctrl-C (twice: at once), SIGTERM, "
             "--count, --timeout or --connections. "
             "Run as root (sudo), hsviz opens the packet socket (and attaches strace for "
             "--trace-pid), then drops to the user who ran sudo (or --user) with no capability "
             "left, before it reads a packet or writes a file; files are made new, never through "
             "a link, mode 0600 (--mode). "
             "With -- CMD, the command runs under strace once the capture is ready (as that "
             "user; --as-root only for a real root login); the capture stops --grace seconds after it exits, "
             "or, stopping first, ends it. With --trace-pid, strace attaches to running processes "
             "and detaches when the capture stops; they keep running. Either way the socket calls "
             "are printed after the summaries and written beside the pcap: FILE.calls.jsonl "
             "(aligned with the segments) and FILE.strace (strace's own log). "
             "Exit status: 0 when the capture worked, whatever the traced command's own status "
             "(reported as 'hsviz: command exited with status N'); 2 when capturing or tracing "
             "cannot start (no strace: 'tracing needs strace'); 130 after a second Ctrl-C.",
             file=False)
def _add_capture(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, required=True, help="TCP port, either side (1-65535)")
    p.add_argument("--iface", default="lo", help="interface to capture on (default: lo)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="pcap to write (default: capture-YYYYmmdd-HHMMSS.pcap in the current directory)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after SECONDS")
    p.add_argument("--connections", type=int, metavar="N",
                   help="stop once N connections have ended (both FINs acknowledged, or a RST)")
    p.add_argument("--plot", action="store_true",
                   help="on exit, also draw the sequence diagram beside the pcap (.png, every "
                   "connection on one figure)")
    p.add_argument("--trace-pid", type=int, action="append", metavar="PID", default=[],
                   help="trace the socket calls of this running process (repeatable; needs strace)")
    p.add_argument("--as-root", action="store_true",
                   help="run the command after -- with root's full rights (a real root login "
                   "only: refused under sudo)")
    p.add_argument("--user", metavar="NAME",
                   help="the user to become once the packet socket is open (default: the "
                   "user who ran sudo; run as plain root, root without capabilities)")
    _add_file_options(p, what="the pcap, FILE.strace and FILE.calls.jsonl")
    p.add_argument("--grace", type=float, default=0.5, metavar="SECONDS",
                   help="keep capturing this long after the traced command exits, for the "
                   "last FIN/ACK; also how long the command may take to exit by itself when "
                   "the capture stops first (default: 0.5)")
    p.add_argument("--kernel", action="store_true",
                   help="also record the kernel's own account of the port (TCP states, windows, "
                   "retransmissions, resets, drops and their reasons) through tracefs, into "
                   "FILE.kernel.jsonl beside the pcap (needs root; without it, says why and "
                   "captures anyway). A FILE.kernel.jsonl left by an earlier capture to the same "
                   "FILE is removed either way: it described the capture this one replaces")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                   help="run CMD [ARGS ...] under strace while capturing (needs strace)")
    p.set_defaults(func=_cmd_capture)


def _add_file_options(p: argparse.ArgumentParser, *, what: str) -> None:
    """--mode, --snaplen and --no-payload: for files that will be shared."""
    p.add_argument("--mode", default="0600", metavar="OCTAL",
                   help=f"file mode of {what} (default: 0600: they hold payloads)")
    p.add_argument("--snaplen", type=int, metavar="N",
                   help="keep at most N bytes of each frame (the analysis keeps every "
                   "length from the IP header)")
    p.add_argument("--no-payload", action="store_true",
                   help="keep only each frame's headers (link, IP, TCP/UDP), for sharing")


def _preload(*, plot: bool, draw: bool = True) -> None:
    """Import, as root before the drop, every module the capture's end runs after it.

    The user dropped to may not be able to read this Python's files at all (a venv
    under /root, or in a 0700 directory), so nothing may load lazily afterwards: every
    module of the package, and with ``--plot`` (``draw``: when the drop changes users) a
    whole drawing of a small handshake, which loads matplotlib's backends, Pillow's PNG
    writer and the fonts (matplotlib keeps each font file open once it has used it)."""
    import importlib
    import pkgutil

    import handshake_viz

    names = [m.name for m in pkgutil.walk_packages(handshake_viz.__path__, "handshake_viz.")
             if m.name.rsplit(".", 1)[-1] not in ("__main__", "_build")]
    if not plot:  # these load matplotlib, which a capture without --plot never needs
        names = [n for n in names if n not in ("handshake_viz.draw", "handshake_viz.api")]
    # numpy's BLAS starts a thread per CPU when it is loaded; a thread alive at the drop
    # would keep capabilities (they belong to a thread), so it loads single-threaded.
    saved = {k: os.environ.get(k) for k in _BLAS_THREADS}
    os.environ.update(dict.fromkeys(_BLAS_THREADS, "1"))
    try:
        for name in names:
            importlib.import_module(name)
        if plot and draw:
            _warm_up()
    finally:  # the traced command gets the environment it was given
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _warm_up() -> None:
    """:func:`_draw_once`, whose failure costs nothing: the real drawing, after it, says
    what is wrong in one line."""
    try:
        _draw_once()
    except Exception:  # noqa: BLE001 - a warm-up must never cost the work it prepares
        pass


def _draw_once() -> None:
    """Draw a five-segment connection (handshake, data, reset) to a temporary PNG as ``--plot``
    draws the capture, so that everything drawing needs is loaded now."""
    import struct
    import tempfile

    def frame(sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                         b"\x7f\0\0\1", b"\x7f\0\0\1")
        return bytes(12) + b"\x08\x00" + ip + tcp

    from handshake_viz.pcapio import PcapWriter

    c, s = 40000, 8080
    frames = [frame(c, s, 100, 0, 0x02), frame(s, c, 500, 101, 0x12), frame(c, s, 101, 501, 0x10),
              frame(c, s, 101, 501, 0x18, b"hi"), frame(s, c, 501, 103, 0x14)]
    with tempfile.TemporaryDirectory(prefix="hsviz-") as tmp:
        pcap = Path(tmp, "warm.pcap")
        with PcapWriter(pcap, background_flush=False) as writer:
            for i, f in enumerate(frames):
                writer.write(f, 1 + i / 1000)
        _plot_capture(pcap)


_BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _plot_capture(pcap: Any) -> Any:
    """Draw what a capture wrote beside it, every connection on one figure (.png)."""
    from handshake_viz.pipeline import load

    draw = _drawing()
    return draw.save_figure(draw.render_trace(load(pcap)), pcap.with_suffix(".png"))


def _cmd_capture(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.capture import STAMP_WAIT, LiveCapture, default_output_name
    from handshake_viz.pipeline import LiveTracking

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if args.command and not command:
        raise UsageError("--: give the command to trace after it (hsviz capture --port P -- CMD ARGS...)")
    if command and args.trace_pid:
        raise UsageError("--trace-pid: trace either a command after -- or running processes, not both")
    if args.as_root and not command:
        raise UsageError("--as-root: only for a command given after --")
    tracing = bool(command or args.trace_pid)
    from handshake_viz.outfile import parse_mode
    from handshake_viz.privilege import PrivilegedSetup, capture_identity

    file_options: dict[str, Any] = {"mode": parse_mode(args.mode), "headers_only": args.no_payload}
    if args.snaplen is not None:
        file_options["snaplen"] = args.snaplen
    privileges = PrivilegedSetup(capture_identity(args.user, as_root=args.as_root))
    # Whatever runs after the drop is imported before it: the user may not be able to
    # read this Python's own files (a Python installed under /root).
    privileges.add(lambda: _preload(plot=args.plot, draw=privileges.target.uid != os.geteuid()))

    tracking = LiveTracking(connections=args.connections)
    view = _LiveView(tracking, out, err, status=err.isatty())
    tracking.on_segment = view.segment
    tracking.on_datagram = view.datagram

    def ready() -> None:
        err.write(f"listening on {args.iface} port {args.port}\n")
        if not live.arrival_stamps:
            err.write(f"{PROG}: warning: the kernel did not stamp packets on arrival within "
                      f"{STAMP_WAIT:g} s: their times are when they were read, and may be late\n")
        err.flush()

    output = args.output or default_output_name()
    session: Any = None
    if tracing:
        from handshake_viz.session import TracedCapture

        session = TracedCapture(
            args.port, command=command, pids=args.trace_pid, as_root=args.as_root,
            grace=args.grace, iface=args.iface, output=output,
            count=args.count, timeout=args.timeout,
            on_ready=ready, on_packet=tracking.packet, on_status=view.status,
            privileges=privileges, **file_options,
        )
        live = session.live
    else:
        live = LiveCapture(
            args.port, iface=args.iface, output=output,
            count=args.count, timeout=args.timeout,
            on_ready=ready, on_packet=tracking.packet, on_status=view.status,
            privileges=privileges, **file_options,
        )
    tracking.stop = live.stop
    with _kernel_events(args.port, live.output, err, wanted=args.kernel, privileges=privileges,
                        mode=file_options["mode"]) as kernel:
        return _run_capture(args, live, session, view, err, out, kernel)


class _kernel_events:
    """``--kernel`` around a capture: starts recording before the capture is ready (one
    line and no kernel events when it cannot), writes FILE.kernel.jsonl on ``finish``,
    and removes the trace instance on every way out.  A SIGTERM before the capture
    handles signals itself ends the command through the same cleanup."""

    def __init__(self, port: int, pcap: Any, err: TextIO, *, wanted: bool, privileges: Any = None,
                 mode: int | None = None) -> None:
        self.port, self.pcap, self.err, self.wanted = port, Path(pcap), err, wanted
        self.privileges, self.mode = privileges, mode
        self.recorder: Any = None
        self._old_term: Any = None

    def __enter__(self) -> _kernel_events:
        import signal
        import threading

        from handshake_viz.kernelio import KernelRecorder, remove_stale

        # An old X.kernel.jsonl must not pair with the new capture; removed as the user
        # (after the drop) when there is one to drop to.
        if self.privileges is None:
            remove_stale(self.pcap)
        else:
            self.privileges.after.append(lambda: remove_stale(self.pcap))
        if not self.wanted:
            return self
        if threading.current_thread() is threading.main_thread():
            self._old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        recorder = KernelRecorder(self.port)
        if self.privileges is None:  # nothing to drop: open and read at once
            self._open(recorder, read=True)
            return self

        def opened() -> None:  # as root, before the drop
            self._open(recorder, read=False)

        def reading() -> None:  # as the user, right after it
            if self.recorder is not None:
                self.recorder.start_reading()

        self.privileges.add(opened)
        self.privileges.after.append(reading)
        return self

    def _open(self, recorder: Any, *, read: bool) -> None:
        from handshake_viz.errors import KernelEventsUnavailable

        try:
            self.recorder = recorder.start() if read else recorder.open()
        except KernelEventsUnavailable as exc:
            self.err.write(f"{PROG}: {exc}; capturing without them\n")

    def finish(self) -> Path | None:
        from handshake_viz.errors import KernelEventsUnavailable
        from handshake_viz.kernel import kernel_path_for
        from handshake_viz.kernelio import write_kernel_jsonl

        try:
            log = self.recorder.stop()
        except KernelEventsUnavailable as exc:
            self.err.write(f"{PROG}: warning: {exc}\n")
            return None
        path = write_kernel_jsonl(log, kernel_path_for(self.pcap), mode=self.mode)
        for w in self.recorder.warnings:
            self.err.write(f"{PROG}: warning: {w}\n")
        if log.lost:
            self.err.write(f"{PROG}: warning: the kernel's trace buffer overflowed: {log.lost} events lost; "
                           f"{path} misses them\n")
        self.err.write(f"{PROG}: wrote {len(log.events)} kernel events to {path}\n")
        return path

    def __exit__(self, *exc: object) -> None:
        import signal

        if self.recorder is not None:
            self.recorder.close()
            if self.recorder.left_behind is not None:  # never silent
                self.err.write(f"{PROG}: warning: could not remove the trace instance "
                               f"{self.recorder.left_behind}: remove it with rmdir\n")
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run_capture(args: argparse.Namespace, live: Any, session: Any, view: Any, err: TextIO,
                 out: TextIO, kernel: _kernel_events) -> int:
    try:
        outcome = session.run() if session is not None else None
        result = outcome.capture if outcome is not None else live.run()
    except KeyboardInterrupt:  # a second Ctrl-C: the pcap is closed, say where it is
        view.clear_status()
        if live.ready.is_set():
            err.write(f"{PROG}: wrote {live.stats.packets} packets to {safe_text(live.output)}\n")
            if session is not None and session.ended_command:
                err.write(f"{PROG}: ended the command\n")
            if session is not None and session.calls_written is not None:
                err.write(f"{PROG}: wrote the socket calls to {safe_text(session.calls_written)}\n")
        raise
    finally:
        view.clear_status()
    view.summaries()
    summaries = view.tracking.summaries()
    if outcome is not None:
        _print_calls(outcome.calls, summaries, out)
        _report_traced(outcome, result.reason, err)
    if result.stats.dropped:
        err.write(f"{PROG}: warning: the kernel dropped {result.stats.dropped} packets "
                  f"(receive buffer full); {result.output} misses them\n")
    err.write(f"{PROG}: wrote {result.stats.packets} packets to {safe_text(result.output)}\n")
    if outcome is not None:
        n = len(outcome.calls)
        err.write(f"{PROG}: wrote {n} socket call{'s' if n != 1 else ''} to {safe_text(outcome.calls_path)} "
                  f"(strace log: {safe_text(outcome.strace_log)})\n")
        for fault in outcome.faults:  # the strace log could not be written whole
            err.write(f"{PROG}: {safe_text(fault)}\n")
    if kernel.recorder is not None:
        kernel.finish()
    if args.plot:
        if summaries or view.tracking.flows.flow_count:
            try:
                drawn = _plot_capture(result.output)
            except (ImportError, OSError) as exc:  # after the drop, as a user who cannot read it
                from handshake_viz.errors import OutputError

                why = getattr(exc, "strerror", None) or exc
                raise OutputError(f"{result.output.with_suffix('.png')}: not drawn: {why} "
                                  f"(the capture is whole in {result.output})") from None
            err.write(f"{PROG}: drew {safe_text(drawn)}\n")
        else:
            err.write(f"{PROG}: no connection to draw\n")
    return 2 if outcome is not None and outcome.faults else 0


def _print_calls(calls: Any, summaries: list[Any], out: TextIO) -> None:
    """After the summaries: each connection's traced calls, timed from its first segment
    as its ladder is, then the calls on no captured connection (listening sockets, calls
    before the capture), timed from the capture's first segment."""
    by_conn: dict[int | None, list[Any]] = {}
    for c in sorted(calls, key=lambda c: (c.start, c.end)):
        by_conn.setdefault(c.conn, []).append(c)
    if not by_conn:
        return
    first = {s.conn: s.first_ts for s in summaries}
    t_all = min(first.values()) if first else None
    write = out.write
    write("\n")
    for conn in sorted(k for k in by_conn if k is not None):
        write(f"conn {conn}: socket calls\n")
        for c in by_conn[conn]:
            write(report.format_call(c, first.get(conn, t_all)) + "\n")
    if None in by_conn:
        write("socket calls on no captured connection\n")
        t0 = t_all if t_all is not None else by_conn[None][0].start
        for c in by_conn[None]:
            write(report.format_call(c, t0) + "\n")
    out.flush()


def _report_traced(outcome: Any, reason: str, err: TextIO) -> None:
    from handshake_viz.session import describe_status

    if outcome.mode == "command":
        if outcome.terminated:
            err.write(f"{PROG}: the capture stopped first ({reason}): ended the command "
                      f"({describe_status(outcome.status)})\n")
        else:
            err.write(f"{PROG}: command {describe_status(outcome.status)}\n")
    else:
        each = ", ".join(f"pid {p} ({'still running' if p in outcome.still_running else 'exited'})"
                         for p in outcome.pids)
        err.write(f"{PROG}: stopped tracing {each}\n")
    if outcome.unparsed:
        sample = f" (first: {outcome.problems[0]})" if outcome.problems else ""
        err.write(f"{PROG}: warning: {outcome.strace_log}: {outcome.unparsed} line"
                  f"{'s' if outcome.unparsed != 1 else ''} not understood{sample}\n")


@_subcommand("replay",
             help="feed a saved capture through the live view with its original timing",
             description="Print a saved capture's segments one by one as `hsviz capture` would, "
             "waiting between them as long as the capture did (scaled by --speed), then the summaries.")
def _add_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speed", type=float, default=1.0,
                   help="time scale: 2 plays twice as fast, 0 does not wait (default: 1)")
    p.add_argument("--inject", action="store_true",
                   help="also re-send each frame on --iface (root or CAP_NET_RAW)")
    p.add_argument("--iface", default="lo", help="interface for --inject (default: lo)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl "
                   "(default: FILE's .calls.jsonl beside it, when present), printed after the summaries")
    p.set_defaults(func=_cmd_replay)


def _cmd_replay(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.capture import replay
    from handshake_viz.pipeline import LiveTracking, load

    tracking = LiveTracking()
    view = _LiveView(tracking, out, err, status=False)
    tracking.on_segment = view.segment
    tracking.on_datagram = view.datagram
    with replay(args.file, speed=args.speed, inject=args.inject, iface=args.iface, udp=True) as packets:
        for packet in packets:
            tracking.packet(packet)
        stats = packets.stats
        warnings = list(stats.warnings)
    _warn(warnings, err)
    if not tracking.tracker.connection_count and not tracking.flows.flow_count:
        raise UsageError(f"{args.file}: no TCP segments or UDP datagrams in {stats.records} records")
    view.summaries()
    calls_file = _calls_file(args)
    if calls_file is not None:  # the socket calls, as the live view of `capture -- CMD` prints them
        trace = load(args.file, calls=calls_file, infer=False)
        _print_calls(trace.calls, [c.summary for c in trace.connections], out)
    return 0


# ----------------------------------------------------------------------------------------
# plot
# ----------------------------------------------------------------------------------------

PLOT_FORMATS = (".png", ".svg", ".pdf", ".html")


def _conn_list(text: str) -> list[int]:
    """``--conn 0,2,5``: connection numbers, comma separated."""
    try:
        conns = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: connection numbers, e.g. 0 or 0,2,5") from None
    if not conns:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one connection number")
    return conns


@_subcommand("plot",
             help="draw the sequence diagram of connections and UDP flows (png, svg, pdf, or an "
             "interactive html page)",
             description="Draw a capture as a sequence diagram: a lifeline per socket address (a "
             "server's listening port is one lifeline however many clients it has), one arrow per "
             "segment or UDP datagram with its label and seq/ack, the TCP states where they change, "
             "and the socket calls in the lanes beside the lifelines (traced when FILE.calls.jsonl or "
             "--calls exists, otherwise inferred from the segments and drawn hollow). Several "
             "connections share one figure and one time axis.")
def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file; the format comes from the extension: .png, .svg, .pdf, or "
                   ".html for an interactive page (one self-contained file: hover a segment for "
                   "its record and bytes, zoom, open folds) (default: FILE with .png next to the input)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--conn", type=_conn_list, metavar="N[,N...]",
                       help="the connections to draw, e.g. 0 or 0,2,5 (default: 0; a capture with "
                       "only UDP draws its flows)")
    which.add_argument("--all", action="store_true",
                       help="every connection and UDP flow on one figure")
    p.add_argument("--pages", action="store_true",
                   help="a PDF with one page per connection (and per UDP flow) instead of one figure")
    p.add_argument("--time", choices=("ordered", "real"), default="ordered",
                   help="ordered: rows evenly spaced in event order, real time in the margin "
                   "(default); real: rows spaced by real time")
    p.add_argument("--max-rows", type=int, default=60, metavar="N",
                   help="fold the middle of longer exchanges into one marked row (0: draw all)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl")
    p.add_argument("--windows", action="store_true",
                   help="beside the ladder, the kernel's window variables at each segment a tcp_probe "
                   "matched: cwnd, ssthresh, srtt, snd_wnd, the usable window and rcv_wnd (needs "
                   "FILE.kernel.jsonl, written by capture/demo --kernel)")
    p.add_argument("--explain", action="store_true",
                   help="number the rows each sentence of the story cites (findings lettered) and write "
                   "the story and the findings under the diagram (as hsviz explain); call labels say "
                   "what a call waited for when that took a millisecond or more")
    _add_explain_options(p, explain_flag=False)
    _add_verify_option(p)
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.errors import OutputError

    src = Path(args.file)
    dest = Path(args.output) if args.output else src.with_suffix(".png")
    if dest.suffix.lower() not in PLOT_FORMATS:
        raise OutputError(f"{dest}: unknown output format '{dest.suffix}' (use .png, .svg, .pdf or .html)")
    if args.pages and dest.suffix.lower() != ".pdf":
        raise UsageError(f"{dest}: --pages draws one page per connection: use a .pdf output")
    if args.max_rows < 0:
        raise UsageError(f"--max-rows {args.max_rows}: must be 0 (no folding) or more")
    conns = args.conn
    if conns is not None and min(conns) < 0:
        raise UsageError(f"--conn {min(conns)}: connection numbers start at 0")
    from handshake_viz.child import Child
    from handshake_viz.pipeline import load

    everything = args.all or args.pages
    reading = partial(load, src, calls=args.calls, verify_checksums=args.verify_checksums)

    def read() -> Any:
        if everything:
            return reading()
        try:  # only what is drawn: the first connection unless --conn says which
            return reading(conn=[0] if conns is None else conns)
        except NoSuchConnection as exc:
            if conns is None and exc.count == 0:  # a capture of UDP alone: its flows
                return reading()
            raise

    if everything or not _worth_a_child(src):
        trace = read()
        draw = _drawing()
    else:  # a few connections of a large file: read it while matplotlib loads
        child = Child(str(src), lambda: (read(),))
        with child as items:
            draw = _drawing()
            if not child.ready():
                _warm_up()  # fonts, Pillow, matplotlib's caches: about 0.06 s less after
            (trace,) = items
    layers = _plot_layers(args, trace, err)
    with warnings.catch_warnings():
        # said once above (_plot_layers), not once per glyph
        warnings.filterwarnings("ignore", message="no font with Chinese glyphs")
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        if args.pages:
            draw.plot_all(trace, dest, time=args.time, max_rows=args.max_rows, **layers)
        else:
            if not everything and conns is None:
                conns = [0] if trace.connections else []  # a capture with only UDP: its flows
            chosen = None if everything else conns
            flows = None if everything or trace.connections else [f.flow for f in trace.flows]
            if dest.suffix.lower() == ".html":
                from handshake_viz.html import write_page

                write_page(trace, dest, conns=chosen, flows=flows, time=args.time, max_rows=args.max_rows,
                           **layers)
            else:
                fig = draw.render_trace(trace, conns=chosen, flows=flows, time=args.time,
                                        max_rows=args.max_rows, **layers)
                draw.save_figure(fig, dest)
    _warn(trace.warnings, err)
    out.write(f"{safe_text(dest)}\n")
    return 0


#: ``plot`` of one or a few connections: a capture at least this large is read in a
#: child process while the parent loads matplotlib (about half a second) -- on the
#: 1,040,000-packet benchmark, with the PNG's own savings (draw.write_png), 2.4 s became
#: 1.8 s.  Below it, reading takes about as long as forking.
PLOT_CHILD_MIN_BYTES = 1 << 20


def _worth_a_child(src: Path) -> bool:
    """Whether ``plot`` reads ``src`` in a child: a regular file of at least
    :data:`PLOT_CHILD_MIN_BYTES`, and a second CPU to read it on."""
    from handshake_viz.child import readable_beside, usable_cpus

    size = readable_beside(src)
    return size is not None and size >= PLOT_CHILD_MIN_BYTES and usable_cpus() >= 2


def _drawing() -> ModuleType:
    """:mod:`handshake_viz.draw`, with matplotlib on its file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    from handshake_viz import draw

    return draw


def _plot_layers(args: argparse.Namespace, trace: Any, err: TextIO) -> dict[str, Any]:
    """--windows, --explain and --lang as the plotting functions' keywords; a line on
    stderr for a layer that cannot be drawn as asked."""
    from handshake_viz.i18n import default_lang

    lang = args.lang or default_lang()
    if args.windows and trace.kernel is None:
        _warn([f"--windows: {args.file} has no kernel events beside it (FILE.kernel.jsonl, written by "
               "hsviz capture --kernel): no window strip"], err)
    if args.explain and lang == "zh":
        from handshake_viz.draw import NO_CJK_FONT, cjk_font

        if cjk_font() is None:
            _warn([NO_CJK_FONT], err)
    return {"windows": args.windows, "explain": args.explain, "lang": lang}


# ----------------------------------------------------------------------------------------
# parser and entry point
# ----------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------
# demo and export
# ----------------------------------------------------------------------------------------


@_subcommand("demo",
             help="run a TCP lesson on loopback (server + client), capture it and draw it",
             description="Run a small real server and client on 127.0.0.1 that show one TCP lesson, "
             "capture their segments live (root or CAP_NET_RAW), record their socket calls, and write "
             "NAME.pcap, NAME.calls.jsonl and NAME.png. Without the privilege, open the shipped "
             "captures/NAME.pcap instead.",
             file=False)
def _add_demo(p: argparse.ArgumentParser) -> None:
    from handshake_viz.demo import DEFAULT_SCENARIO, EXPECTED_LABELS_FILE

    p.add_argument("name", nargs="?", default=DEFAULT_SCENARIO, metavar="NAME",
                   help=f"scenario (default: {DEFAULT_SCENARIO}; see --list)")
    p.add_argument("--list", action="store_true", help="list the scenarios and their lessons")
    p.add_argument("--all", action="store_true",
                   help=f"run every scenario (and write {EXPECTED_LABELS_FILE} beside them)")
    p.add_argument("-o", "--output-dir", default=".", metavar="OUT_DIR",
                   help="where to write the files (default: the current directory)")
    p.add_argument("--shipped", action="store_true",
                   help="do not capture: open the shipped captures/NAME.pcap")
    p.add_argument("--redraw", action="store_true",
                   help="with --shipped: draw the shipped capture again, to OUT_DIR/NAME.png "
                   "(how captures/*.png are made)")
    p.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="record the kernel's own account beside the capture (NAME.kernel.jsonl): "
                   "on by default when it can be had (root and tracefs)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.demo import (
        EXPECTED_LABELS_FILE,
        SCENARIOS,
        can_capture,
        draw_lesson,
        dump_expected_labels,
        expected_labels,
        format_result,
        run_scenario,
        scenario,
        shipped_captures_dir,
    )
    from handshake_viz.tracer import give_to_sudo_user

    if args.list:
        width = max(map(len, SCENARIOS))
        out.writelines(f"{s.name:<{width}}  {s.lesson}\n" for s in SCENARIOS.values())
        return 0
    if args.redraw and not args.shipped:
        raise UsageError("--redraw: only with --shipped (a live run draws its capture anyway)")
    names = list(SCENARIOS) if args.all else [args.name]
    for n in names:
        scenario(n)  # unknown names fail before anything runs
    live: bool | None = False if args.shipped else None
    if live is None and not can_capture():
        err.write(f"hsviz: capturing needs root or CAP_NET_RAW: showing the shipped captures in "
                  f"{shipped_captures_dir()} instead\n")
        live = False
    results = []
    for n in names:
        result = run_scenario(n, args.output_dir, live=live, kernel=args.kernel)
        results.append(result)
        err.writelines(f"hsviz: {w}\n" for w in result.warnings)
        if args.redraw and not result.live:
            _drawing()
            drawn = draw_lesson(result, Path(args.output_dir) / f"{n}.png")
            err.write(f"{PROG}: drew {safe_text(drawn)}\n")
            continue
        out.writelines(line + "\n" for line in format_result(result))
        written = [result.pcap, result.calls_path] + ([result.kernel_path] if result.kernel_path else []) \
            + ([result.png] if result.png else [])
        if result.live:
            give_to_sudo_user(written)  # `sudo hsviz demo` leaves files the user owns
        verb = "wrote" if result.live else "shipped"
        out.write(f"{verb}: {', '.join(map(str, written))}\n")
        if result.live and result.png is None:
            err.write(f"hsviz: warning: no diagram drawn for {n}\n")
        out.write("\n")
        out.flush()
    if args.all and live is not False:
        path = Path(args.output_dir) / EXPECTED_LABELS_FILE
        path.write_text(dump_expected_labels(expected_labels(results)))
        give_to_sudo_user([path])
        out.write(f"wrote: {path}\n")
    return 0



@_subcommand("export",
             help="write a pcapng copy of a capture whose packets name the socket calls",
             description="Copy a pcap/pcapng capture to pcapng, every frame unchanged, adding a packet "
             "comment to each segment a socket call caused ('connect() pid 1234 fd 3') or that "
             "released one ('recvfrom() pid 1240 fd 4 returns 6'), so Wireshark shows the calls too. "
             "Calls come from FILE's .calls.jsonl beside it (or --calls); a connection without "
             "traced calls gets calls inferred from its segments, marked '(inferred)'.")
def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="OUT", help="pcapng to write (default: "
                   "FILE.annotated.pcapng beside the input)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl")
    p.add_argument("--traced-only", action="store_true",
                   help="comment only traced calls, never calls inferred from the segments")
    _add_file_options(p, what="the pcapng")
    _add_verify_option(p)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.export import export_capture

    if args.output is not None and not args.output:
        raise UsageError("-o: empty output path")
    from handshake_viz.outfile import parse_mode

    if args.snaplen is not None and args.snaplen < 1:
        raise UsageError(f"--snaplen {args.snaplen}: must be at least 1")
    result, traced = export_capture(args.file, args.output, calls=args.calls,
                                    traced_only=args.traced_only, mode=parse_mode(args.mode),
                                    snaplen=args.snaplen, headers_only=args.no_payload,
                                    verify_checksums=args.verify_checksums)
    _warn(result.warnings, err)
    kind = "traced" if traced else "inferred"
    if not result.comments:
        kind = "none"
    out.write(f"{safe_text(result.path)}: {result.frames} frames, {result.comments} comments on "
              f"{result.commented} frames (calls: {kind})\n")
    return 0


# ----------------------------------------------------------------------------------------
# show: one frame's bytes, field by field
# ----------------------------------------------------------------------------------------


@_subcommand("show",
             help="one TCP frame's header bytes field by field, as they are on the wire",
             description="Take one frame apart: Ethernet (or the capture's link layer), IP and TCP, "
             "each field's offset, its bytes as sent (network byte order, big-endian) and its value; "
             "for ports, addresses, seq and ack the host-order value and the call that puts it in "
             "network order (htons(8080) -> 1f 90), and what a little-endian machine would have "
             "sent had the program forgotten htons().")
def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame", type=int, required=True, metavar="N",
                   help="frame number, from 1 (as Wireshark's frame.number and the JSONL 'frame')")
    p.set_defaults(func=_cmd_show)


def _cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.frames import show_frame
    from handshake_viz.wire import show_lines

    view = show_frame(args.file, args.frame)
    out.writelines(line + "\n" for line in show_lines(view, args.file))
    return 0


# Subcommand registrars, in the order `hsviz --help` lists them.  Modules that add a
# subcommand put their registrar here.
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_analyze,
    _add_explain,
    _add_plot,
    _add_show,
    _add_capture,
    _add_replay,
    _add_demo,
    _add_export,
]


class _Version(argparse.Action):
    """``--version``: hsviz's version and the tracker that runs (looked up only when asked)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from handshake_viz import __version__
        from handshake_viz.engine import IMPLEMENTATION

        sys.stdout.write(f"{PROG} {__version__}, {IMPLEMENTATION}\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="TCP handshake visualizer: label every segment of a capture, draw "
        "sequence diagrams, and line segments up with the socket calls that caused them.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version and whether the tracker runs compiled or on "
                        "pure Python (HSVIZ_PURE_PYTHON=1 forces pure Python), and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub)
    return parser


def entry() -> None:
    """The ``hsviz`` command and ``python -m handshake_viz``: :func:`main`, then exit.

    After ``analyze`` and ``plot``, which only read files and write their output (every
    file closed, no thread or child left), the process exits at once: tearing the
    interpreter down -- collecting every object, unloading every module -- changes
    nothing then, and costs 3 % of ``analyze --summary`` on a million packets."""
    code = main(_quick_exit=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, _quick_exit: bool = False) -> int:
    """Run ``hsviz``; returns the exit status (0 ok, 2 unusable input, 130 interrupted)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _run(args, out, err)
    if _quick_exit and args.func in (_cmd_analyze, _cmd_plot):
        for stream in (out, err):
            try:
                stream.flush()
            except (OSError, ValueError):
                return code  # the interpreter's own exit says what it says of a lost stream
        os._exit(code)
    return code


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        return int(args.func(args, out, err) or 0)
    except NoSuchConnection as exc:  # the library's words, in terms of this command's flag
        n = exc.count
        err.write(f"{PROG}: {safe_text(exc.source)}: --conn {exc.conn} out of range (the capture has {n} "
                  f"connection{'s' if n != 1 else ''})\n")
        return exc.exit_status
    except HsvizError as exc:
        err.write(f"{PROG}: {safe_text(exc)}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # `hsviz analyze big.pcap | head`: the reader left; that is not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
