"""The interactive page (`hsviz plot -o x.html`, `conn.show()`), read without a browser:
what it holds, that it needs nothing from outside, that wire text stays text; and the
scapy hand-over (`seg.packet()`, `trace.packets()`).  tests/test_browser.py opens the
pages in Chromium."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

import handshake_viz as hv
from handshake_viz.cli import main
from handshake_viz.errors import OutputError, UsageError
from handshake_viz.html import page_data, render_page
from handshake_viz.layout import plan_trace
from handshake_viz.model import Call
from handshake_viz.trace import strace_line

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"

#: What a hostile capture carries: markup, a script, an attribute break-out, terminal escapes.
HOSTILE = [b"<script>window.__pwned=1</script>", b'</svg><svg onload="window.__pwned=2">',
           b'"><img src=x onerror="window.__pwned=3">', b"\x1b[31mred\x1b[0m \x00\x07 & &amp; <b>bold</b>"]


def hostile_capture(directory: Path) -> Path:
    """A connection whose payloads (and whose traced call's arguments) are hostile text."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    c, s, t = ("10.0.0.1", 40000), ("10.0.0.2", 8080), 1_700_000_000.0
    packets = []

    def add(dt: float, src: tuple[str, int], dst: tuple[str, int], flags: str, seq: int, ack: int,
            payload: bytes = b"") -> None:
        p = Ether() / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq,
                                                       ack=ack) / payload
        p.time = t + dt
        packets.append(p)

    add(0.000, c, s, "S", 1000, 0)
    add(0.001, s, c, "SA", 5000, 1001)
    add(0.002, c, s, "A", 1001, 5001)
    seq = 1001
    for i, evil in enumerate(HOSTILE):
        add(0.010 + i * 0.01, c, s, "PA", seq, 5001, evil)
        seq += len(evil)
        add(0.011 + i * 0.01, s, c, "A", 5001, seq)
    add(0.100, c, s, "FA", seq, 5001)
    add(0.101, s, c, "FA", 5001, seq + 1)
    add(0.102, c, s, "A", seq + 1, 5002)
    path = directory / "hostile.pcap"
    wrpcap(str(path), packets)
    ends = {"local": {"ip": c[0], "port": c[1]}, "remote": {"ip": s[0], "port": s[1]}}
    calls: list[dict[str, Any]] = [
        dict(type="call", conn=None, pid=7, tid=7, fd=3, call="connect", start=t - 0.0005, end=t + 0.0012,
             ret=0, errno=None, args='3, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("10.0.0.2")}, 16',
             nbytes=None, inferred=False, frames=[], **ends),
        dict(type="call", conn=None, pid=7, tid=7, fd=3, call="sendto", start=t + 0.0095, end=t + 0.0099,
             ret=len(HOSTILE[0]), errno=None, args='3, "</pre><script>window.__pwned=4</script>", 33, 0, NULL, 0',
             nbytes=len(HOSTILE[0]), inferred=False, frames=[], **ends),
    ]
    (directory / "hostile.calls.jsonl").write_text("".join(json.dumps(x) + "\n" for x in calls))
    return path


def plot_html(src: Path, dest: Path, *options: str) -> Path:
    out, err = io.StringIO(), io.StringIO()
    assert main(["plot", str(src), "-o", str(dest), *options], out=out, err=err) == 0, err.getvalue()
    return dest


class Tags(HTMLParser):
    """Every element with its attributes, and each script's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def parse(page: str) -> Tags:
    t = Tags()
    t.feed(page)
    t.close()
    return t


def data_of(page: str) -> dict[str, Any]:
    scripts = parse(page).scripts
    (packed,) = [text for attrs, text in scripts if attrs.get("id") == "hsviz-data"]
    return json.loads(gzip.decompress(base64.b64decode("".join(packed.split()))))  # type: ignore[no-any-return]


def own_script() -> str:
    return resources.files("handshake_viz").joinpath("static", "hsviz.js").read_text(encoding="utf-8")


def assert_only_our_scripts(page: str) -> None:
    """Two script elements, both ours: the code (exactly static/hsviz.js) and the data
    (not executable, base64 only); no element or attribute that runs or fetches anything."""
    tags = parse(page)
    assert len(tags.scripts) == 2
    (data_attrs, data), (code_attrs, code) = tags.scripts
    assert data_attrs == {"id": "hsviz-data", "type": "application/octet-stream", "data-encoding": "gzip+base64"}
    assert re.fullmatch(r"[A-Za-z0-9+/=\s]*", data)
    assert code_attrs == {} and code == own_script()
    names = {tag for tag, _ in tags.tags}
    assert not names & {"img", "iframe", "object", "embed", "link", "base", "form-action", "audio", "video"}
    for tag, attrs in tags.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        assert not any(k in ("src", "href") for k in attrs), (tag, attrs)
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    csp = next(a["content"] for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None and f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


# ------------------------------------------------------------------------------ the page


def test_echo_page_is_one_file_needing_nothing_from_outside(tmp_path: Path) -> None:
    page = plot_html(CAPTURES / "echo.pcap", tmp_path / "echo.html").read_text(encoding="utf-8")
    assert_only_our_scripts(page)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "<title>conn 0: 127.0.0.1:59958 → 127.0.0.1:53745" in page


def test_the_page_draws_the_layout_the_svg_is_painted_from(tmp_path: Path) -> None:
    page = plot_html(CAPTURES / "echo.pcap", tmp_path / "echo.html").read_text(encoding="utf-8")
    data = data_of(page)
    trace = hv.load(CAPTURES / "echo.pcap")
    layout = plan_trace([trace.connections[0]], calls=trace.calls)
    (view,) = data["views"]
    (drawn,) = view["layouts"]
    keys = drawn["rows"]["keys"]
    rows = [dict(zip(keys, r)) for r in drawn["rows"]["rows"]]
    assert [r["text"] for r in rows] == list(layout.labels)
    assert [r["frame"] for r in rows] == [r.frame for r in layout.rows] == list(range(1, 15))
    assert [r["y"] for r in rows] == [round(r.y, 4) for r in layout.rows]
    assert len(drawn["calls"]["rows"]) == len(layout.calls)
    assert drawn["title"] == layout.title and drawn["legend"] == list(layout.legend)
    # each frame: its JSONL record, its payload, its header fields, the calls joined to it
    seg = trace.connections[0].segments[3]
    frame = data["frames"]["4"]
    assert frame["rec"] == seg.to_json()
    assert frame["payload"] == {"length": 6, "captured": 6, "hex": "68656c6c6f0a", "text": "hello\\n"}
    assert [f[1] for f in frame["wire"]["fields"]][:3] == ["destination MAC", "source MAC", "EtherType"]
    lines = [data["calls"][i]["strace"] for i in frame["calls"]]
    assert any('sendto(18, "hello\\n", 6, 0, NULL, 0) = 6' in s for s in lines)
    assert any('recvfrom(19, "hello\\n", 4096, 0, NULL, NULL) = 6' in s for s in lines)
    assert data["stories"][0]["story"][0]["frames"] == [1]


def test_a_folded_view_carries_the_layout_that_opens_it(tmp_path: Path) -> None:
    page = plot_html(CAPTURES / "multi-client.pcap", tmp_path / "m.html", "--all", "--max-rows", "10")
    data = data_of(page.read_text(encoding="utf-8"))
    names = [v["name"] for v in data["views"]]
    assert names[0] == "all" and names[1:] == [f"conn {c.conn}: {c.summary.client} → {c.summary.server}"
                                                for c in hv.load(CAPTURES / "multi-client.pcap").connections]
    whole = data["views"][0]
    folded, opened = whole["layouts"]
    kinds = [r[folded["rows"]["keys"].index("kind")] for r in folded["rows"]["rows"]]
    assert kinds.count("fold") == 1 and len(kinds) == 10
    frames = [r[opened["rows"]["keys"].index("frame")] for r in opened["rows"]["rows"]]
    assert frames == whole["frames"] and len(frames) == 36


def test_wire_text_is_data_never_markup(tmp_path: Path) -> None:
    path = hostile_capture(tmp_path)
    page = plot_html(path, tmp_path / "hostile.html").read_text(encoding="utf-8")
    assert_only_our_scripts(page)
    for evil in ("window.__pwned", "onerror", "</svg><svg", "</pre>", "<b>bold"):
        assert evil not in page  # only in the compressed data, never as text of the page
    data = data_of(page)
    payloads = [bytes.fromhex(f["payload"]["hex"]) for f in data["frames"].values()]
    assert all(evil in payloads for evil in HOSTILE)  # the bytes are all there, as data
    assert any("</pre><script>" in c["strace"] for c in data["calls"])
    text = data["frames"]["10"]["payload"]["text"]
    assert "\x1b" not in text and "\\x1b[31mred" in text and "\\x00\\x07" in text


def test_a_1000_segment_connection_stays_small(tmp_path: Path) -> None:
    from conftest import make_capture

    pcap = tmp_path / "big.pcap"
    assert make_capture(pcap, 1, 331) == 1000
    page = plot_html(pcap, tmp_path / "big.html")  # folded, with the layout that opens it
    assert page.stat().st_size < 2_000_000
    data = data_of(page.read_text(encoding="utf-8"))
    assert len(data["frames"]) == 1000 and len(data["views"][0]["layouts"][-1]["rows"]["rows"]) == 1000


def test_plot_html_needs_an_html_name_and_a_place_to_write(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["plot", str(CAPTURES / "echo.pcap"), "-o", str(tmp_path / "no" / "x.html")], out=out, err=err) == 2
    assert "does not exist" in err.getvalue() and err.getvalue().count("\n") == 1
    trace = hv.load(CAPTURES / "echo.pcap")
    from handshake_viz.html import write_page

    with pytest.raises(OutputError, match="needs a .html name"):
        write_page(trace, tmp_path / "x.txt")
    with pytest.raises(UsageError, match="nothing to draw"):
        page_data([])


def test_render_page_refuses_static_files_that_would_break_out() -> None:
    data = page_data(hv.load(CAPTURES / "refused.pcap").connections)
    assert render_page(data).startswith("<!DOCTYPE html>")


# ------------------------------------------------------------------------------ strace lines


def test_strace_line_keeps_what_strace_printed() -> None:
    trace = hv.load(REPO / "tests" / "data" / "align" / "py-echo.pcap",
                    calls=REPO / "tests" / "data" / "align" / "py-echo.strace")
    accept = next(c for c in trace.calls if c.call == "accept4")
    assert strace_line(accept) == (
        f"{accept.tid}  {accept.start:.6f} accept4(3, {{sa_family=AF_INET, sin_port=htons(46158), "
        f'sin_addr=inet_addr("127.0.0.1")}}, [16], SOCK_CLOEXEC) = 4 <{accept.end - accept.start:.6f}>')


def test_strace_line_spells_out_a_recorded_call() -> None:
    trace = hv.load(CAPTURES / "echo.pcap")
    lines = [strace_line(c) for c in trace.calls]
    assert any(re.fullmatch(r"444  \d+\.\d{6} socket\(AF_INET, SOCK_STREAM, IPPROTO_IP\) = 13 <\d\.\d{6}>", s)
               for s in lines)
    assert any('bind(13, {sa_family=AF_INET, sin_port=htons(0), sin_addr=inet_addr("127.0.0.1")}, 16) = 0' in s
               for s in lines)
    assert any("listen(13, 8) = 0" in s for s in lines)
    assert any("accept4(13, {sa_family=AF_INET, sin_port=htons(59958), " in s and "SOCK_CLOEXEC) = 19" in s
               for s in lines)
    assert any('sendto(18, "hello\\n", 6, 0, NULL, 0) = 6' in s for s in lines)
    assert any('recvfrom(19, "", 4096, 0, NULL, NULL) = 0' in s for s in lines)
    refused = hv.load(CAPTURES / "refused.pcap")
    connect = next(c for c in refused.calls if c.call == "connect")
    assert "= -1 ECONNREFUSED (Connection refused)" in strace_line(connect)
    inferred = Call(pid=0, tid=0, fd=None, call="write", start=1.0, end=1.0, ret=6, nbytes=6, inferred=True)
    assert strace_line(inferred, b"hello\n") == '?  1.000000 write(?, "hello\\n", 6, 0, NULL, 0) = 6'


# ------------------------------------------------------------------------------ notebook, scapy


def test_show_in_a_notebook_falls_back_to_the_picture() -> None:
    conn = hv.load(CAPTURES / "echo.pcap").connections[0]
    page = conn.show()
    bundle = page._repr_mimebundle_()
    assert bundle["image/png"].startswith(b"\x89PNG")
    cell = bundle["text/html"]
    picture = cell.index("<img src=\"data:image/png;base64,")
    frame = cell.index('<iframe sandbox="allow-scripts"')
    assert picture < frame and 'style="display:none;' in cell[frame:]
    # the frame holds the whole page, escaped as an attribute value
    srcdoc = re.search(r'srcdoc="([^"]*)"', cell)
    assert srcdoc is not None
    import html

    assert html.unescape(srcdoc.group(1)) == page.html
    assert len(data_of(page.html)["frames"]) == 14
    several = hv.load(CAPTURES / "multi-client.pcap").show()
    assert len(data_of(several.html)["views"]) == 4


def test_a_segment_hands_over_its_frame_to_scapy(tmp_path: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from handshake_viz.frames import read_frames

    trace = hv.load(CAPTURES / "echo.pcap")
    seg = trace.connections[0].segments[3]
    pkt = seg.packet()
    assert isinstance(pkt, Ether) and IP in pkt and TCP in pkt and pkt[Raw].load == b"hello\n"
    assert bytes(pkt) == read_frames(CAPTURES / "echo.pcap", [4])[4].data
    assert float(pkt.time) == pytest.approx(seg.ts)
    assert pkt[TCP].sport == seg.sport and pkt[TCP].seq == seg.seq
    packets = trace.packets()
    assert len(packets) == 14 and bytes(packets[3]) == bytes(pkt)
    udp = hv.load(CAPTURES / "udp.pcap")
    assert udp.flows[0].datagrams[0].packet().summary().startswith("Ether / IP / UDP")
    # a segment whose capture was never loaded here: say so, or take the file
    from dataclasses import replace

    stranger = replace(seg, ts=seg.ts + 1)
    with pytest.raises(UsageError, match="which capture it came from is not known"):
        stranger.packet()
    assert bytes(stranger.packet(CAPTURES / "echo.pcap")) == bytes(pkt)


def test_the_page_carries_the_layers_the_png_draws(tmp_path: Path) -> None:
    kernel = Path(__file__).resolve().parent / "data" / "kernel"
    page = plot_html(kernel / "backlog.pcap", tmp_path / "k.html", "--all", "--windows", "--explain", "--lang", "en")
    data = data_of(page.read_text(encoding="utf-8"))
    trace = hv.load(kernel / "backlog.pcap")
    layout = plan_trace(trace.connections, calls=trace.calls, kernel=trace.kernel, windows=True, explain=True)
    drawn = data["views"][0]["layouts"][0]

    def rows(name: str) -> list[dict[str, Any]]:
        return [dict(zip(drawn[name]["keys"], r)) for r in drawn[name]["rows"]]

    assert [(s["shown"], s["verdict"], s["badge"]) for s in rows("states")] == [
        (m.shown, m.verdict, m.badge) for m in layout.states]
    assert [f["ref"] for f in rows("footnotes")] == [f.ref for f in layout.footnotes]
    (queue,) = rows("queues")
    assert queue["text"] == "accept queue: 2 queued, backlog 1 (full)" and len(queue["steps"]) == len(layout.queues[0].steps)
    assert [r["kernel_tag"] for r in rows("rows") if r["dropped"]] == [r.kernel_tag for r in layout.rows if r.dropped]
    assert [r["margin_text"] for r in rows("rows")] == [r.margin_text for r in layout.rows]
    assert [(m["number"], m["frame"]) for m in rows("markers")] == [(m.number, m.frame) for m in layout.markers]
    assert [s["text"] for s in rows("story")] == [s.text for s in layout.story]
    assert layout.windows is not None and len(drawn["windows"]["rows"]["rows"]) == len(layout.windows.rows)
    assert [c["leader"] is not None for c in rows("calls")] == [b.leader is not None for b in layout.calls]
    assert data["frames"]["11"]["rec"]["kernel"]["drop"]["reason"] == "TCP_LISTEN_OVERFLOW"
    assert_only_our_scripts(page.read_text(encoding="utf-8"))
