"""The tracker against real captures, checked per packet with tshark and per
connection with Zeek (values in ../shared/corpus/expected, read in place).

Deliberate differences, each with its reason:
- ``rel_ack`` is ``None`` when the ACK bit is clear.  RFC 9293 §3.1: the
  acknowledgment number is significant only "if the ACK control bit is set";
  tshark prints a number anyway (0 on a SYN, a huge one on a bare RST), so those
  packets are not compared.
- tshark's window_full, keep_alive_ack and zero_window_probe flags are extra
  columns; the hsviz flags of those names are not in the main table and are
  left out of the comparison, and so is hsviz's own ``duplicate`` (tshark has none).
- ``ack-unseen`` on four ACKs (KNOWN_FLAG_DIFFERENCES): tshark 4.0 says an ACK
  acknowledges a segment that was never captured once per gap, and keeps a
  bookkeeping for it (``maxseqtobeacked`` and the peer's duplicate-ACK counter) that
  hsviz follows only as far as the rest of the corpus shows it (seqanalysis); on
  these four, whose acknowledged segment turns up right after the ACK, tshark stays
  silent and hsviz flags them.  RFC 9293 §3.10.7.4 has no word on it: it is a
  heuristic either way, and hsviz's reading (the ACK covers bytes not seen) is true.
- Zeek: pppoe-over-qinq's six frames whose PPPoE length is 6 bytes short of the IP
  total length carry 6 payload bytes for Zeek (it reads the IP header) and none for
  hsviz (which gives ``tcp.len`` as tshark does): so one 't' comes after the 'Ff'
  instead of before (KNOWN_ZEEK_DIFFERENCES).
- Zeek connections are matched to rows by originator, responder and start time:
  Zeek's log is in removal order, and one tshark stream may hold several Zeek
  connections (``Tracker.zeek_connections``).  A baseline run with ``zeek -b`` loads
  only the scripts it names, so only their ports are "likely server ports" in
  Zeek's role guess (``zeek.ZEEK_PORTS``); the test reads them from the command.
- Checksums: Zeek verifies them unless run with ``-C``; hsviz only when asked
  (``verify_checksums``).  So every Zeek row is compared with hsviz not verifying
  (the runs with ``-C``, and those where nothing fails or Zeek's verdict changes no
  row), and every row of a verifying run once more with hsviz verifying:
  localhost-bad-chksum's two variants, ``ignore_checksums_nets`` (one ``SF``
  connection) and the default (the SYN alone, ``C``; then the server's ``HcADF``),
  are both matched.  Verification flags a segment where tshark's validated status
  (``tcp.checksum.status``, extra file) says bad, and nowhere else; it changes no
  other field of any packet.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import re

from handshake_viz.decode import open_capture
from handshake_viz.track import LIKELY_SERVER_PORTS, Tracker
from handshake_viz.zeek import ZEEK_PORTS

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"third-party corpus not found at {CORPUS} (it ships beside the repo in CI)"
)

BATCHES = ("traces", "batch2/traces")
TRACES = [f"{b}/{p.name}" for b in BATCHES for p in sorted((CORPUS / b).glob("*"))] if CORPUS.is_dir() else []


def _expected(trace: str, kind: str) -> Path:
    """``batch2/traces/x.pcap``, ``tshark`` -> ``batch2/expected/x.pcap.tshark.tsv``."""
    folder, name = trace.rsplit("/", 1)
    return CORPUS / folder.replace("traces", "expected") / f"{name}.{kind}.tsv"


# tshark column -> hsviz analysis name
FLAGS = {
    "tcp.analysis.retransmission": "retransmission",
    "tcp.analysis.fast_retransmission": "fast-retransmission",
    "tcp.analysis.out_of_order": "out-of-order",
    "tcp.analysis.duplicate_ack": "dup-ack",
    "tcp.analysis.lost_segment": "lost-segment",
    "tcp.analysis.zero_window": "zero-window",
    "tcp.analysis.keep_alive": "keep-alive",
    "tcp.analysis.window_update": "window-update",
}
EXTRA_FLAGS = {
    "tcp.analysis.spurious_retransmission": "spurious-retransmission",
    "tcp.analysis.ack_lost_segment": "ack-unseen",
}
NOT_COMPARED = {"window-full", "keep-alive-ack", "zero-window-probe", "duplicate"}
# (file, frame) -> the flags hsviz adds that tshark does not (see the docstring)
KNOWN_FLAG_DIFFERENCES = {
    ("bigtransfer.pcap", 61): {"ack-unseen"},
    ("bigtransfer.pcap", 65): {"ack-unseen"},
    ("ipv6-http-atomic-frag.pcap", 7): {"ack-unseen"},
    ("reassembly.pcap", 105): {"ack-unseen"},
}
# (file, originator port) -> Zeek's history, and hsviz's (see the docstring)
KNOWN_ZEEK_DIFFERENCES = {("pppoe-over-qinq.pcap", 20394): ("ShADdtaTTtFf", "ShADdtaTTFft")}


def _likely_ports(zeek_cmd: str) -> frozenset[int]:
    """The likely server ports of the Zeek run a baseline came from: every analyzer's
    (as hsviz assumes by default), or with ``-b`` only those of the scripts named."""
    if " -b " not in f" {zeek_cmd} ":
        return LIKELY_SERVER_PORTS
    words = set(re.findall(r"[a-z0-9]+", re.sub(r"\$TRACES/\S+", "", zeek_cmd)))
    return frozenset().union(*(ports for name, ports in ZEEK_PORTS.items() if name in words))


def _tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _track(trace: str, likely: frozenset[int] = LIKELY_SERVER_PORTS, *, verify: bool = False
           ) -> tuple[list, Tracker]:
    tracker = Tracker(likely_server_ports=likely)
    with open_capture(CORPUS / trace) as reader:
        if verify:
            segments = list(reader.records(tracker.feed_checked, verify_checksums=True))
        else:
            segments = [tracker.feed(p) for p in reader]
    return segments, tracker


@pytest.mark.parametrize("trace", TRACES)
def test_every_packet_agrees_with_tshark(trace):
    name = trace.rsplit("/", 1)[1]
    expected = _tsv(_expected(trace, "tshark"))
    extra = {r["frame.number"]: r for r in _tsv(_expected(trace, "tshark-extra"))}
    segments, _ = _track(trace)
    assert len(segments) == len(expected)
    problems = []
    for seg, row in zip(segments, expected):
        want_flags = {v for k, v in FLAGS.items() if row[k]}
        want_flags |= {v for k, v in EXTRA_FLAGS.items() if extra[row["frame.number"]].get(k)}
        want_flags |= KNOWN_FLAG_DIFFERENCES.get((name, seg.frame), set())
        got_flags = {a.value for a in seg.analysis} - NOT_COMPARED
        got = (seg.frame, seg.conn, seg.rel_seq, seg.length, got_flags)
        want = (int(row["frame.number"]), int(row["tcp.stream"]), int(row["tcp.seq"]),
                int(row["tcp.len"]), want_flags)
        if got != want:
            problems.append(f"frame {seg.frame}: got {got}, tshark {want}")
        if seg.flags & 0x10 and seg.rel_ack != int(row["tcp.ack"]):
            problems.append(f"frame {seg.frame}: rel_ack {seg.rel_ack}, tshark {row['tcp.ack']}")
        if not seg.flags & 0x10:
            assert seg.rel_ack is None
    assert not problems, "\n".join(problems)


ZEEK_FILES = [t for t in TRACES if _expected(t, "zeek-conn").exists()]


def _zeek_rows(trace: str, verifying: bool) -> list[dict[str, str]]:
    """The Zeek rows of ``trace`` to compare with hsviz not verifying checksums (every
    run's but the default variant of a file that has one), or (``verifying``) only
    those of a run that verified them (no ``-C``, no checksum variant)."""
    rows = _tsv(_expected(trace, "zeek-conn"))
    if verifying:
        return [r for r in rows if r["variant"] in ("", "default-checksum-validation")
                and "-C" not in r["zeek_cmd"].split("(")[0].split()]  # (not in its comment)
    return [r for r in rows if not r["variant"] or r["variant"].startswith("ignore_checksums")]


@pytest.mark.parametrize(("trace", "verify"), [
    *((t, False) for t in ZEEK_FILES),
    *((t, True) for t in ZEEK_FILES if _zeek_rows(t, True)),  # (not the runs with -C)
], ids=lambda x: "verifying" if x is True else "not-verifying" if x is False else x)
def test_connections_agree_with_zeek(trace, verify):
    name = trace.rsplit("/", 1)[1]
    rows = _zeek_rows(trace, verify)
    assert rows
    _, tracker = _track(trace, _likely_ports(rows[0]["zeek_cmd"]), verify=verify)
    found = tracker.zeek_connections()
    problems = []
    for row in rows:
        key = (row["id.orig_h"], int(row["id.orig_p"]), row["id.resp_h"], int(row["id.resp_p"]))
        same = [z for z in found if (z.orig.ip, z.orig.port, z.resp.ip, z.resp.port) == key]
        if not same:
            problems.append(f"no Zeek connection {key}: {[(z.orig, z.resp) for z in found]}")
            continue
        z = min(same, key=lambda z: abs(z.ts - float(row["ts"])))
        found.remove(z)
        history = row["history"]
        if (name, key[1]) in KNOWN_ZEEK_DIFFERENCES:
            zeek_says, history = KNOWN_ZEEK_DIFFERENCES[name, key[1]]
            assert row["history"] == zeek_says
        got, want = [], []
        for field, value in (("conn_state", z.conn_state), ("history", z.history),
                             ("orig_bytes", z.orig_bytes), ("resp_bytes", z.resp_bytes),
                             ("orig_pkts", z.orig_pkts), ("resp_pkts", z.resp_pkts)):
            expected = history if field == "history" else row[field]
            if expected not in ("NA", "-"):
                got.append(value)
                want.append(expected if field in ("conn_state", "history") else int(expected))
        if got != want:
            problems.append(f"{key}: hsviz {got}, Zeek {want}")
    assert not problems, "\n".join(problems)


def test_every_zeek_row_is_compared():
    """Every Zeek row of both batches was found above (the count of the comparisons, so
    that a file dropping out of the corpus cannot pass silently): 84 rows without
    verifying, and the 70 of the 16 runs that verified checksums once more with it."""
    rows = sum(len(_zeek_rows(t, False)) for t in ZEEK_FILES)
    verifying = [t for t in ZEEK_FILES if _zeek_rows(t, True)]
    assert len(ZEEK_FILES) == 27 and rows == 84
    assert len(verifying) == 16 and sum(len(_zeek_rows(t, True)) for t in verifying) == 70
    assert [r["history"] for r in _zeek_rows("batch2/traces/localhost-bad-chksum.pcap", True)] == ["C", "HcADF"]


# tshark's validated checksum status: 0 bad, 1 good, 2 unverified (the segment was
# not captured whole)
_CHECKSUM_FLAGS = {"bad-checksum", "checksum-offloaded"}


@pytest.mark.parametrize("trace", TRACES)
def test_checksums_agree_with_tshark(trace):
    """With verification on, a segment is flagged (``bad-checksum``, or
    ``checksum-offloaded`` when the field holds the pseudo-header's sum) exactly where
    tshark's validated status is bad; and nothing else of any packet changes."""
    extra = {int(r["frame.number"]): r["tcp.checksum.status(validated)"]
             for r in _tsv(_expected(trace, "tshark-extra"))}
    plain, _ = _track(trace)
    checked, _ = _track(trace, verify=True)
    problems = []
    for a, b in zip(plain, checked, strict=True):
        flags = {x.value for x in b.analysis} & _CHECKSUM_FLAGS
        if bool(flags) != (extra[b.frame] == "0") or len(flags) > 1:
            problems.append(f"frame {b.frame}: {sorted(flags)}, tshark status {extra[b.frame]}")
        if tuple(x for x in b.analysis if x.value not in _CHECKSUM_FLAGS) != a.analysis:
            problems.append(f"frame {b.frame}: analysis {b.analysis} verifying, {a.analysis} not")
        if b.label != a.label or b.rel_seq != a.rel_seq or b.rel_ack != a.rel_ack or b.conn != a.conn or (
                b.client_state, b.server_state) != (a.client_state, a.server_state):
            problems.append(f"frame {b.frame}: verifying changed {a} into {b}")
    assert not problems, "\n".join(problems)


def test_checksum_statuses_in_the_corpus():
    """What the corpus holds, by kind (tshark says bad of both the bad and the
    offloaded ones): offload on the capturing host in five files (as their README says:
    captured on the client, on loopback ...), sums that verify nowhere in four, and
    PPPoE's six frames, which verify over the IP header's length (Zeek's) but not over
    the PPPoE length's (tshark's)."""
    from handshake_viz.checksum import STATUS_NAMES

    found = {}
    for trace in TRACES:
        with open_capture(CORPUS / trace) as reader:
            for _ in reader.records(lambda *f: None, verify_checksums=True):
                pass
            counts = {n: c for n, c in zip(STATUS_NAMES, reader.stats.checksums.counts) if c and n != "good"}
        if counts:
            found[trace.rsplit("/", 1)[1]] = counts
    assert found == {
        "retransmit-fast009.pcap": {"bad": 18, "unverifiable": 21},
        "truncated-header.pcap": {"unverifiable": 12},
        "connect-with-header.pcap": {"offloaded": 58},
        "ipv6-http-atomic-frag.pcap": {"offloaded": 4},
        "irc-starttls.pcap": {"offloaded": 10},
        "localhost-bad-chksum.pcap": {"offloaded": 6},
        "mixed-vlan-mpls.pcap": {"bad": 22},
        "mpls-in-vlan.pcap": {"bad": 3},
        "pop3-starttls.pcap": {"offloaded": 33},
        "pppoe-over-qinq.pcap": {"link-short": 6},
        "reassembly.pcap": {"bad": 15},
        "ssh-dups.pcap": {"offloaded": 152},
        "timestamp.pcap": {"unverifiable": 691},
    }
