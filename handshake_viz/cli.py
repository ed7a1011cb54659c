"""The ``hsviz`` command: argument parsing and output formatting only.

Every subcommand calls the library and prints what it returns.  Errors the
library raises on purpose (``HsvizError``) become one line on stderr and exit
status 2; nothing else is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from handshake_viz import report
from handshake_viz.errors import HsvizError, UsageError

__all__ = ["main", "build_parser"]

PROG = "hsviz"


# ----------------------------------------------------------------------------------------
# analyze
# ----------------------------------------------------------------------------------------


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="label every TCP segment of a capture and summarise each connection",
        description="Decode a pcap/pcapng file, run the TCP state machine and print a text "
        "ladder per connection (or JSON Lines with --jsonl).",
    )
    p.add_argument("file", help="capture file (pcap or pcapng)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--jsonl", action="store_true", help="print JSON Lines (schema in README)")
    fmt.add_argument("--summary", action="store_true", help="print only one line per connection")
    p.add_argument("--conn", type=int, metavar="N", help="only connection N (0-based, as tcp.stream)")
    p.add_argument("--calls", metavar="FILE", help="socket calls: an strace log or a .calls.jsonl "
                   "(default: FILE's .calls.jsonl beside it, when present)")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from handshake_viz.decode import open_capture
    from handshake_viz.track import Tracker

    if args.conn is not None and args.conn < 0:
        raise UsageError(f"--conn {args.conn}: connection numbers start at 0")
    tracker = Tracker()
    feed = tracker.feed
    want = args.conn
    write = out.write
    with open_capture(args.file) as reader:
        if args.jsonl:
            line = report.segment_jsonl
            if want is None:
                for packet in reader:
                    write(line(feed(packet)) + "\n")
            else:
                for packet in reader:
                    seg = feed(packet)
                    if seg.conn == want:
                        write(line(seg) + "\n")
        elif args.summary:
            for packet in reader:
                feed(packet)
        else:
            ladders: dict[int, list[str]] = {}
            starts: dict[int, float] = {}
            for packet in reader:
                seg = feed(packet)
                if want is not None and seg.conn != want:
                    continue
                t0 = starts.setdefault(seg.conn, seg.ts)
                ladders.setdefault(seg.conn, []).append(report.format_segment(seg, t0))
        warnings = list(reader.stats.warnings)
        stats = reader.stats
    summaries = tracker.summaries()
    if want is not None and want >= len(summaries):
        raise UsageError(f"{args.file}: --conn {want} out of range (the capture has "
                         f"{len(summaries)} connection{'s' if len(summaries) != 1 else ''})")
    if not summaries:
        for w in warnings:
            err.write(f"{PROG}: warning: {w}\n")
        raise UsageError(f"{args.file}: no TCP segments in {stats.records} records")
    selected = summaries if want is None else [summaries[want]]
    if args.jsonl:
        for s in selected:
            write(report.connection_jsonl(s) + "\n")
    elif args.summary:
        for s in selected:
            write(report.format_summary(s) + "\n")
    else:
        for s in selected:
            write(report.connection_header(s) + "\n")
            write(report.ladder_columns() + "\n")
            for text in ladders.get(s.conn, []):
                write(text + "\n")
            write(report.format_summary(s) + "\n\n")
    for w in warnings:
        err.write(f"{PROG}: warning: {w}\n")
    return 0


# ----------------------------------------------------------------------------------------
# parser and entry point
# ----------------------------------------------------------------------------------------

# Subcommand registrars, in the order `hsviz --help` lists them.  Modules that add a
# subcommand put their registrar here.
_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_add_analyze]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="TCP handshake visualizer: label every segment of a capture, draw "
        "sequence diagrams, and line segments up with the socket calls that caused them.",
    )
    from handshake_viz import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    """Run ``hsviz``; returns the exit status (0 ok, 2 unusable input, 130 interrupted)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, out, err) or 0)
    except HsvizError as exc:
        err.write(f"{PROG}: {exc}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    except BrokenPipeError:
        # `hsviz analyze big.pcap | head`: the reader left; that is not an error.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
