"""``hsviz explain``: the story names each lesson's facts, every finding rule fires on a
real capture that shows it (and not on a clean one), the Chinese catalog matches the
English messages frame for frame, and the two stalls made live by
``tests/programs/stalls.py`` are found with the right frames.

Stories are checked through their data (message keys, cited frames and calls), the
text only where a lesson's words matter (RST, ECONNREFUSED, TIME_WAIT ...).
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from handshake_viz.cli import main
from handshake_viz.explain import MESSAGES, Explanation, Finding, FindingKind, explain_connection, explain_trace
from handshake_viz.i18n import LOCALE_DIR, default_lang, make_mo, parse_po, translate
from handshake_viz.model import CallKind, Direction, Label, TcpState
from handshake_viz.pipeline import load
from handshake_viz.timing import Wait, call_timings

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"
CORPUS = REPO.parent / "shared" / "corpus"
STALLS = REPO / "tests" / "programs" / "stalls.py"


def _explained(name: str) -> list[Explanation]:
    return list(explain_trace(load(CAPTURES / f"{name}.pcap")).connections)


def _kinds(e: Explanation) -> list[FindingKind]:
    return [f.kind for f in e.findings]


def _keys(e: Explanation) -> list[str]:
    return [s.key for s in e.story]


def _corpus(name: str) -> Path:
    for batch in ("traces", "batch2/traces"):
        path = CORPUS / batch / name
        if path.is_file():
            return path
    pytest.skip(f"{name}: the third-party corpus is not at {CORPUS}")


def _corpus_findings(name: str, kind: FindingKind) -> list[tuple[Explanation, Finding]]:
    e = explain_trace(load(_corpus(name)))
    return [(x, f) for x in e.connections for f in x.findings if f.kind is kind]


# ------------------------------------------------------------------ the lessons


def test_refused_names_the_rst_and_econnrefused() -> None:
    [e] = _explained("refused")
    text = e.text()
    assert "RST #2" in text and "ECONNREFUSED" in text
    [f] = e.findings
    assert f.kind is FindingKind.REFUSED and f.frames == (1, 2)
    assert [c.errno for c in f.calls] == ["ECONNREFUSED"]
    assert _keys(e)[:3] == ["open.call", "refused", "refused.call"]


def test_time_wait_names_eaddrinuse_and_the_side_in_time_wait() -> None:
    first, second = _explained("time-wait")
    [f] = first.findings
    assert f.kind is FindingKind.ADDRESS_IN_USE and f.numbers["side"] == "server"
    assert f.numbers["reuseaddr_retry"] is True and 59 < f.numbers["left_s"] <= 60  # type: ignore[operator]
    assert any(c.errno == "EADDRINUSE" for c in f.calls)
    assert "EADDRINUSE" in f.text() and "TIME_WAIT" in f.text()
    # the frame it cites is the one after which the server was in TIME-WAIT
    since = [s for s in load(CAPTURES / "time-wait.pcap").connections[0].segments if s.frame in f.frames]
    assert since[0].server_state is TcpState.TIME_WAIT
    assert "time-wait" in _keys(first) and "The server, which closed first" in first.text()
    assert "The client, which closed first" in second.text() and not second.findings


def test_half_close_read_returns_zero_while_data_still_flows_back() -> None:
    [e] = _explained("half-close")
    keys = _keys(e)
    assert "shutdown.first" in keys and "read.zero" in keys and "half-close" in keys
    zero = e.story[keys.index("read.zero")]
    [read] = zero.calls
    assert read.kind is CallKind.RECV and read.ret == 0
    fin = zero.frames[0]
    half = e.story[keys.index("half-close")]
    assert min(half.frames) > fin  # the server's data after the client's FIN
    assert _kinds(e) == [FindingKind.HALF_CLOSE]


def test_backlog_accept_after_the_handshake() -> None:
    queued, dropped = [], []
    for e in _explained("backlog"):
        (dropped if "syn.again" in _keys(e) else queued).append(e)
    assert len(queued) == 2 and len(dropped) == 1  # listen(1) queues two; the third SYN is dropped
    for e in queued:
        assert "accept.late" in _keys(e)
        [f] = e.findings
        assert f.kind is FindingKind.ACCEPT_LATE and f.numbers["queued_ms"] > 250  # type: ignore[operator]
        assert f.numbers["acked_bytes"] == 20  # the kernel acknowledged the request before accept()
    assert [f.kind for f in dropped[0].findings] == [FindingKind.SYN_RETRANSMITTED]


def test_echo_piggyback_and_no_false_alarm() -> None:
    [e] = _explained("echo")
    assert "ack.piggyback" in _keys(e) or "piggyback.later" in _keys(e)
    assert "捎带应答" in e.text() and "PIGGYBACK" not in e.text()
    assert e.findings == ()
    assert "Nothing unusual found." in e.text()


@pytest.mark.parametrize("name", ["handshake", "echo", "multi-client"])
def test_clean_lessons_have_no_findings(name: str) -> None:
    for e in _explained(name):
        assert e.findings == (), [f.text() for f in e.findings]


def test_reset_close_with_unread_data_and_the_peers_econnreset() -> None:
    [e] = _explained("reset")
    [f] = e.findings
    assert f.kind is FindingKind.RESET and f.numbers["cause"] == "unread-data" and f.numbers["unread"] == 28
    assert "ECONNRESET" in f.text()
    assert "rst.end" in _keys(e) and "rst.error" in _keys(e)


def test_handshake_story_isns_and_four_way_close() -> None:
    [e] = _explained("handshake")
    conn = load(CAPTURES / "handshake.pcap").connections[0]
    syn, sa = conn.segments[0], conn.segments[1]
    text = e.text()
    assert f"{sa.ack} = {syn.seq} + 1" in text  # ack is the peer's ISN plus one
    assert "three-way handshake" in text and "four-way close" in text
    # every sentence cites something, in the order things happened
    anchors = [min(s.frames) for s in e.story if s.frames]
    assert anchors == sorted(anchors)


# ------------------------------------------------------------------ timing


def test_call_timing_says_what_each_call_waited_for() -> None:
    conn = load(CAPTURES / "backlog.pcap").connections[0]
    timed = {t.call.call: t for t in call_timings(conn.calls, conn.segments)}
    assert timed["connect"].waited_for is Wait.SYN_ACK and timed["connect"].released_by == 2
    assert timed["accept4"].waited_for is Wait.CONNECTION and timed["accept4"].queued_ms > 250  # type: ignore[operator]
    assert timed["sendto"].waited_for is Wait.BUFFER_SPACE
    assert timed["close"].waited_for is Wait.NOTHING
    reads = [t for t in call_timings(conn.calls, conn.segments) if t.call.kind is CallKind.RECV]
    assert {t.waited_for for t in reads} == {Wait.DATA, Wait.FIN}
    refused = load(CAPTURES / "refused.pcap").connections[0]
    [connect] = [t for t in call_timings(refused.calls, refused.segments) if t.call.kind is CallKind.CONNECT]
    assert connect.waited_for is Wait.RST and connect.released_by == 2


def test_jsonl_call_lines_carry_the_timing() -> None:
    out = io.StringIO()
    assert main(["analyze", str(CAPTURES / "echo.pcap"), "--jsonl"], out=out, err=io.StringIO()) == 0
    calls = [json.loads(x) for x in out.getvalue().splitlines() if '"type": "call"' in x]
    assert calls and all("waited_for" in c and "blocked_ms" in c for c in calls)
    assert {c["waited_for"] for c in calls if c["call"] == "connect"} == {"syn-ack"}


# ------------------------------------------------------------------ findings on real captures


def test_fast_open_accept_released_at_the_syn() -> None:
    [(e, f)] = [x for x in _corpus_findings("tcp-fast-open.pcap", FindingKind.FAST_OPEN) if x[1].numbers["accepted"]]
    syn = 8
    assert syn in f.frames and f.numbers["syn_bytes"] == 86
    assert any(c.kind is CallKind.ACCEPT and c.frames == (syn,) for c in f.calls)
    assert "accept.fastopen" in _keys(e)


def test_retransmissions_fast_retransmit_and_dup_acks() -> None:
    [(_, f)] = _corpus_findings("retransmit-fast009.pcap", FindingKind.RETRANSMISSION)
    assert f.numbers["fast"] >= 1  # type: ignore[operator]
    fast = [s for s in f.more if s.key == "f.retransmission.fast"]
    assert fast and len(fast[0].frames) == 4  # three duplicate ACKs and the retransmission


def test_copies_are_not_called_retransmissions() -> None:
    [(_, f)] = _corpus_findings("ssh-dups.pcap", FindingKind.RETRANSMISSION)
    assert f.what.key == "f.retransmission.copies-only" and f.numbers["copies"] == f.numbers["retransmissions"]


def test_rto_retransmission_names_the_original() -> None:
    [(_, f)] = _corpus_findings("reassembly.pcap", FindingKind.RETRANSMISSION)
    # The server's FIN #6, sent again as #8: tshark 4.0 calls #8 a fast retransmission
    # (its duplicate-ACK counter after an ACK of unseen data, see seqanalysis), and the
    # story follows tshark's flag.  (Known: no duplicate ACK came; to be worded better.)
    [fast] = [s for s in f.more if s.key == "f.retransmission.fast"]
    assert fast.frames == (8,)
    [(_, fin)] = _corpus_findings("fin_retransmission.pcap", FindingKind.RETRANSMISSION)
    assert fin.numbers["retransmissions"] == 1  # #4 only: the first FIN (#2) reused the SYN's number


def test_mid_stream_and_missed_segments() -> None:
    [(_, f)] = _corpus_findings("no-handshake.pcap", FindingKind.MID_STREAM)
    assert f.numbers["roles_guessed"] is True
    missed = _corpus_findings("reassembly.pcap", FindingKind.MISSED_SEGMENTS)
    assert missed and missed[0][1].numbers["lost_segment"] > 0  # type: ignore[operator]
    one_way = _corpus_findings("ssh.client-side-half-duplex.pcap", FindingKind.MISSED_SEGMENTS)
    assert one_way and all(f.numbers["one_way"] == "client" for _, f in one_way)
    assert not _corpus_findings("ssh.client-side-half-duplex.pcap", FindingKind.NO_ANSWER)


def test_reset_after_close_half_close_and_idle() -> None:
    [(_, f)] = _corpus_findings("irc-starttls.pcap", FindingKind.RESET)
    assert f.numbers["cause"] == "data-after-close"
    assert _corpus_findings("irc-starttls.pcap", FindingKind.HALF_CLOSE)
    assert _corpus_findings("irc-starttls.pcap", FindingKind.IDLE)


def test_keep_alives_and_syn_retransmission() -> None:
    [(_, f)] = _corpus_findings("modbus-and-non-modbus-p502.pcap", FindingKind.KEEP_ALIVE)
    assert f.numbers["keep_alives"] == 3 and 14_000 < f.numbers["interval_ms"] < 17_000  # type: ignore[operator]
    [(_, s)] = _corpus_findings("pop3.pcap", FindingKind.SYN_RETRANSMITTED)
    assert s.numbers["syns"] == 2 and s.numbers["ms"] > 2_000  # type: ignore[operator]
    assert not _corpus_findings("m57-long-49600-80.pcap", FindingKind.SYN_RETRANSMITTED)  # copies, 2 µs apart


def test_no_answer_and_refused_on_the_corpus() -> None:
    assert _corpus_findings("syn-then-rst.pcap", FindingKind.NO_ANSWER)
    assert len(_corpus_findings("pop3.pcap", FindingKind.REFUSED)) == 2


def test_checksum_findings_on_real_captures() -> None:
    """``--verify-checksums`` flags, read on real captures, and words that fit them:
    offload for localhost-bad-chksum's client (captured where it sent them: the field
    holds the pseudo-header's sum), a checksum that fails for mixed-vlan-mpls (its plain
    Ethernet connection carries sums that verify nowhere; Zeek's run took -C).  Without
    verification, no finding."""
    name = _corpus("localhost-bad-chksum.pcap")
    assert not [f for f in load(name).connections[0].explain().findings if f.kind is FindingKind.CHECKSUM]
    conn = load(name, verify_checksums=True).connections[0]
    [f] = [f for f in explain_connection(conn).findings if f.kind is FindingKind.CHECKSUM]
    assert f.frames == tuple(s.frame for s in conn.segments if s.dir is Direction.C2S) == (1, 3, 4, 7, 8, 10)
    assert f.numbers == {"segments": 6, "flag": "checksum-offloaded"}
    text = f.text()
    assert "pseudo-header" in text and "offload" in text and "not corruption" in text and "-C" in text
    assert "伪首部" in f.text("zh") and "卸载" in f.text("zh")

    trace = load(_corpus("mixed-vlan-mpls.pcap"), verify_checksums=True)
    found = [f for c in trace.connections for f in explain_connection(c).findings if f.kind is FindingKind.CHECKSUM]
    assert [f.numbers for f in found] == [{"segments": 22, "flag": "bad-checksum"}]
    text = found[0].text()
    assert "does not verify" in text and "retransmission" in text and "anonymised" in text
    assert "pseudo-header" not in text


def test_no_finding_beyond_the_story_on_clean_corpus_connections() -> None:
    for name in ("get.pcap", "missing-syn.pcap", "zeek-image-post-1080-8000-x.pcap"):
        for e in explain_trace(load(_corpus(name))).connections:
            assert e.findings == (), (name, [f.text() for f in e.findings])


# ------------------------------------------------------------------ every capture: runs, cites real frames, both languages


def _all_captures() -> list[Path]:
    files = sorted(CAPTURES.glob("*.pcap"))
    for batch in ("traces", "batch2/traces"):
        if (CORPUS / batch).is_dir():
            files += sorted((CORPUS / batch).iterdir())
    return files


@pytest.mark.parametrize("path", _all_captures(), ids=lambda p: p.name)
def test_every_sentence_cites_frames_of_its_connection_in_both_languages(path: Path) -> None:
    try:
        trace = load(path)
    except Exception as exc:  # a capture hsviz cannot decode (pppoe) is analyze's business
        pytest.skip(str(exc))
    explained = explain_trace(trace)
    for e, conn in zip(explained.connections, trace.connections):
        frames = {s.frame for s in conn.segments}
        for sentence in (*e.story, *(x for f in e.findings for x in f.sentences)):
            assert set(sentence.frames) <= frames, sentence
            en, zh = sentence.text("en"), sentence.text("zh")
            assert sorted(re.findall(r"#\d+", en)) == sorted(re.findall(r"#\d+", zh)), (en, zh)
        json.dumps(e.to_json("zh"), ensure_ascii=False)


# ------------------------------------------------------------------ the catalogs


def test_every_message_has_a_chinese_translation_naming_the_same_things() -> None:
    entries = {e.msgctxt: e for e in parse_po((LOCALE_DIR / "zh/LC_MESSAGES/hsviz.po").read_text(encoding="utf-8"))}
    tr = translate("zh")
    for key, english in MESSAGES.items():
        assert key in entries and entries[key].msgid == english, f"{key}: run python -m handshake_viz.i18n --update"
        chinese = tr(key, english)
        assert chinese != english or not re.search(r"[a-z]{4}", english), key
        assert sorted(re.findall(r"\{(\w+)\}", chinese)) == sorted(re.findall(r"\{(\w+)\}", english)), key


def test_every_key_the_code_names_is_in_the_template() -> None:
    # The English text lives in locale/hsviz.pot; a key the code spells wrong would only
    # fail when that sentence is said, so every literal key in explain.py is checked here.
    import ast

    tree = ast.parse((REPO / "handshake_viz" / "explain.py").read_text(encoding="utf-8"))

    def literals(node: ast.expr) -> list[str]:
        if isinstance(node, ast.IfExp):
            return literals(node.body) + literals(node.orelse)
        return [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []

    keys: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_say", "Sentence", "Term") and node.args:
            keys += literals(node.args[0])
        elif isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["key"]:
            keys += literals(node.value)
    assert len(set(keys)) > 100
    assert set(keys) - set(MESSAGES) == set()


def test_committed_mo_is_what_the_po_compiles_to() -> None:
    for po in LOCALE_DIR.glob("*/LC_MESSAGES/hsviz.po"):
        want = make_mo(parse_po(po.read_text(encoding="utf-8")))
        assert po.with_suffix(".mo").read_bytes() == want, "remake it: python -m handshake_viz.i18n"


def test_chinese_terms_follow_the_tutorials() -> None:
    text = "\n".join(e.text("zh") for name in ("echo", "half-close", "time-wait") for e in _explained(name))
    for term in ("三次握手", "四次挥手", "半关闭", "捎带应答", "TIME_WAIT"):
        assert term in text, term


def test_default_language_comes_from_the_locale() -> None:
    assert default_lang({"LANG": "zh_CN.UTF-8"}) == "zh"
    assert default_lang({"LANGUAGE": "en_US:zh_CN", "LANG": "zh_CN.UTF-8"}) == "en"
    assert default_lang({}) == "en"


# ------------------------------------------------------------------ the command and the notebook


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_explain_command_text_json_and_chinese() -> None:
    status, out, _ = _run("explain", str(CAPTURES / "refused.pcap"), "--lang", "en")
    assert status == 0 and "1. The client" in out and "[refused]" in out
    status, out, _ = _run("explain", str(CAPTURES / "refused.pcap"), "--lang", "zh")
    assert status == 0 and "连接被拒绝" in out
    status, out, _ = _run("explain", str(CAPTURES / "time-wait.pcap"), "--json", "--conn", "0", "--lang", "en")
    doc = json.loads(out)
    [conn] = doc["connections"]
    assert conn["conn"] == 0 and conn["calls_traced"] is True
    [finding] = conn["findings"]
    assert finding["kind"] == "address-in-use" and finding["frames"] and finding["numbers"]["port"]
    assert all({"n", "key", "text", "frames", "calls"} <= set(s) for s in conn["story"])
    assert all({"waited_for", "blocked_ms", "released_by", "queued_ms"} <= set(c) for c in conn["calls"])


@pytest.mark.parametrize("argv, message", [
    (["explain", "/etc/passwd"], "hsviz: /etc/passwd: not a pcap or pcapng file"),
    (["explain", "captures/echo.pcap", "--conn", "5"], "--conn 5 out of range"),
    (["analyze", "captures/echo.pcap", "--explain", "--jsonl"], "--explain: goes with the text ladder"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    status, _, err = _run(*[str(REPO / a) if a.startswith("captures/") else a for a in argv])
    assert status == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_analyze_explain_puts_the_story_after_each_ladder() -> None:
    status, out, _ = _run("analyze", str(CAPTURES / "backlog.pcap"), "--explain", "--lang", "en")
    assert status == 0
    assert out.count("conn 0: client") == 2  # the ladder's header, then the explanation's
    assert out.index("accept-late") > out.index("SF ShADadFf")


def test_notebook_explain_returns_findings_and_renders() -> None:
    conn = load(CAPTURES / "refused.pcap").connections[0]
    e = conn.explain()
    assert [f.kind for f in e.findings] == [FindingKind.REFUSED]
    assert "<ol>" in e._repr_html_() and "refused" in e._repr_html_()
    assert str(e) == e.text("en")


# ------------------------------------------------------------------ live: the stalls, made on purpose


def _capture_program(mode: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from handshake_viz.api import capture

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs: list[subprocess.Popen[bytes]] = []
    trace = capture(port, connections=1, timeout=20, output=tmp_path / f"{mode}.pcap",
                    on_ready=lambda: procs.append(subprocess.Popen([sys.executable, str(STALLS), mode, str(port)],
                                                                   stdout=subprocess.DEVNULL)))
    assert procs and procs[0].wait(timeout=20) == 0
    return trace.connections[0]


def test_live_nagle_meets_delayed_ack(live: None, tmp_path: Path) -> None:
    conn = _capture_program("nagle", tmp_path)
    [f] = [f for f in conn.explain().findings if f.kind is FindingKind.NAGLE_DELAYED_ACK]
    by_frame = {s.frame: s for s in conn.segments}
    args = dict(f.what.args)
    prev, ack, held = (by_frame[args[name].frames[0]] for name in ("prev", "ack", "held"))  # type: ignore[union-attr]
    assert prev.dir is held.dir is Direction.C2S and prev.length == held.length == 5  # "hello", then "world"
    assert ack.dir is Direction.S2C and ack.label is Label.ACK and ack.rel_ack == prev.rel_end
    assert 0.030 <= ack.ts - prev.ts <= 0.25 and held.ts - ack.ts < 0.002
    assert f.numbers["stalls"] >= 3  # type: ignore[operator]  # every exchange after Linux's quick-ACK start


def test_live_nodelay_has_no_stall(live: None, tmp_path: Path) -> None:
    conn = _capture_program("nodelay", tmp_path)
    assert FindingKind.NAGLE_DELAYED_ACK not in [f.kind for f in conn.explain().findings]


def test_live_zero_window(live: None, tmp_path: Path) -> None:
    conn = _capture_program("zerowindow", tmp_path)
    [f] = [f for f in conn.explain().findings if f.kind is FindingKind.ZERO_WINDOW]
    by_frame = {s.frame: s for s in conn.segments}
    zero = by_frame[f.what.frames[0]]
    assert zero.dir is Direction.S2C and zero.win == 0
    update = by_frame[max(f.what.frames)]
    assert update.dir is Direction.S2C and update.win > 0 and update.ts - zero.ts > 1.0
    probes = [by_frame[n] for n in f.what.frames if by_frame[n].dir is Direction.C2S]
    assert probes and f.numbers["probes"] == len(probes) and f.numbers["side"] == "server"
    assert FindingKind.KEEP_ALIVE not in [x.kind for x in conn.explain().findings]  # the probes are not keep-alives
