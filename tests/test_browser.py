"""The interactive page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by .ci/run) driven by selenium, nothing downloaded.

Outside CI the tests skip, saying why, when no browser is installed; in CI they fail.
One browser serves the whole module; each page is made here with the CLI.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import benchmark_module, make_capture, require
from test_html import HOSTILE, hostile_capture, plot_html

from handshake_viz.frames import read_frames
from handshake_viz.wire import dissect

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "captures"
chromium = benchmark_module("chromium")
#: A page not drawn by then is hung, not slow: how fast pages open is a benchmark
#: (benchmarks/bench_html.py), not something a test judges on a machine that may be busy.
HUNG_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        require(False, "needs selenium (pip install -e '.[test]')")
    require(chromium.installed(),
            "needs a browser: apt-get install chromium chromium-driver (.ci/run installs them)")
    profile = tempfile.mkdtemp(prefix="hsviz-chromium-")
    driver = chromium.start(Path(profile), console=True)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver: Any, path: Path) -> None:
    """Load the page and wait until it has drawn."""
    driver.get_log("browser")  # (what earlier pages logged is theirs)
    start = time.perf_counter()
    driver.get(path.resolve().as_uri())
    while not driver.execute_script("return document.body && document.body.getAttribute('data-ready')"):
        if time.perf_counter() - start > HUNG_S:
            pytest.fail(f"{path.name}: not drawn after {HUNG_S} s: {driver.find_element('id', 'loading').text}")
        time.sleep(0.02)


def css(driver: Any, selector: str) -> list[Any]:
    return driver.find_elements("css selector", selector)


def segments(driver: Any) -> int:
    """Segment rows drawn, once all are (past the first screenfuls they come in batches)."""
    deadline = time.perf_counter() + HUNG_S
    while not driver.execute_script("return document.body.getAttribute('data-drawn')"):
        assert time.perf_counter() < deadline, f"rows still being drawn after {HUNG_S} s"
        time.sleep(0.02)
    return len(css(driver, "g.seg"))


def hover(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(css(driver, selector)[0]).perform()


def click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(css(driver, selector)[0]).click().perform()


def call_named(driver: Any, label: str) -> str:
    """The data-call of the call bar whose label starts with ``label``."""
    return str(driver.execute_script(
        "return [...document.querySelectorAll('g.call')].find("
        "g => g.querySelector('.call-label').textContent.startsWith(arguments[0])).dataset.call", label))


def details(driver: Any) -> str:
    return str(driver.find_element("id", "details").text)


def errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_echo_page_hover_click_jump_keys_screenshot(browser: Any, tmp_path: Path) -> None:
    page = plot_html(CAPTURES / "echo.pcap", tmp_path / "echo.html")
    open_page(browser, page)
    assert segments(browser) == 14

    hover(browser, 'g.seg[data-frame="2"]')  # the SYN-ACK
    shown = details(browser)
    assert shown.startswith("#2 SYN-ACK seq=0 ack=1")
    assert "ack=1" in shown and "SYN-RECEIVED" in shown and "rel_ack" in shown
    assert "htons(53745)" in shown  # its header bytes, field by field

    accept = call_named(browser, "accept4(13)")
    click(browser, f'g.call[data-call="{accept}"] rect.bar')  # the server's accept4()
    shown = details(browser)
    strace = browser.find_element("css selector", "#details pre.strace").text
    assert strace.startswith("469  1795321422.635065 accept4(13, {sa_family=AF_INET, sin_port=htons(59958), "
                             'sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 19 <0.006103>')
    assert "waited for" in shown and "a connection whose handshake completed" in shown
    assert css(browser, f'g.call.selected[data-call="{accept}"]')

    box = browser.find_element("id", "jump-to")
    box.send_keys("12\n")
    assert details(browser).startswith("#12 FIN seq=19 ack=19")
    assert css(browser, 'g.seg.selected[data-frame="12"]')

    from selenium.webdriver.common.keys import Keys

    browser.find_element("id", "stage").send_keys(Keys.ARROW_RIGHT)
    assert details(browser).startswith("#13 FIN-ACK")
    browser.find_element("id", "stage").send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
    assert details(browser).startswith("#11 PIGGYBACK")

    # the panel's bytes are the frame's, field by field as hsviz show gives them
    frame = read_frames(CAPTURES / "echo.pcap", [11])[11]
    rows = [r.text for r in css(browser, "#details table.wire tr:not(.layer):not(.note)")]
    fields = dissect(frame).fields
    assert len(rows) == len(fields)
    for row, f in zip(rows, fields):
        assert row.startswith(f"{f.offset} {f.hex} {f.name}"), row

    shot = tmp_path / "echo.png"
    assert browser.save_screenshot(str(shot))
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 40_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == tuple(browser.execute_script("return [innerWidth, innerHeight]"))
    assert errors(browser) == []


def test_a_fold_opens_in_place_and_closes_again(browser: Any, tmp_path: Path) -> None:
    pcap = tmp_path / "long.pcap"
    total = make_capture(pcap, 1, 40)
    page = plot_html(pcap, tmp_path / "long.html", "--max-rows", "8")
    open_page(browser, page)
    assert segments(browser) == 7 and len(css(browser, "g.fold")) == 1
    fold_top = css(browser, "g.fold rect")[0].rect["y"]
    click(browser, "g.fold rect")
    assert segments(browser) == total and not css(browser, "g.fold")
    first_hidden = css(browser, 'g.seg[data-frame="5"] line.arrow')[0]
    assert abs(first_hidden.rect["y"] - fold_top) < 40  # opened where it was
    click(browser, "g.refold rect")
    assert segments(browser) == 7 and len(css(browser, "g.fold")) == 1
    # stepping into the folded run opens it too
    browser.find_element("id", "jump-to").send_keys("20\n")
    assert segments(browser) == total and details(browser).startswith("#20 ")
    assert errors(browser) == []


def test_several_connections_pick_one(browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    page = plot_html(CAPTURES / "multi-client.pcap", tmp_path / "multi.html", "--all")
    open_page(browser, page)
    assert segments(browser) == 36
    picker = Select(browser.find_element("id", "view"))
    assert [o.text for o in picker.options][0] == "all 3 together" and len(picker.options) == 4
    picker.select_by_index(2)
    assert segments(browser) == 12
    assert browser.find_element("id", "title").text.startswith("conn 1: ")
    assert errors(browser) == []


def test_hostile_capture_shows_its_text_and_runs_none_of_it(browser: Any, tmp_path: Path) -> None:
    page = plot_html(hostile_capture(tmp_path), tmp_path / "hostile.html")
    open_page(browser, page)
    labels = " ".join(t.text for t in css(browser, "g.seg text.detail"))
    assert "<script>window" in labels and "</svg><svg onl" in labels
    for frame in (4, 6, 8, 10):
        click(browser, f'g.seg[data-frame="{frame}"]')
        assert browser.execute_script("return window.__pwned") is None
    assert "\\x1b[31mred\\x1b[0m" in details(browser)
    click(browser, 'g.seg[data-frame="4"]')
    shown = details(browser)
    assert HOSTILE[0].decode() in shown and "</pre><script>window.__pwned=4</script>" in shown
    assert browser.execute_script("return window.__pwned") is None
    assert not css(browser, "img") and not css(browser, "svg svg")
    assert len(css(browser, "script")) == 2


def test_1000_segments_fit_in_a_small_page_that_draws_them_all(browser: Any, tmp_path: Path) -> None:
    """Folded and unfolded; how fast they open is benchmarks/bench_html.py's (under 2 s)."""
    pcap = tmp_path / "big.pcap"
    assert make_capture(pcap, 1, 331) == 1000
    for options, drawn in (((), 59), (("--max-rows", "0"), 1000), (("--max-rows", "0", "--explain"), 1000)):
        page = plot_html(pcap, tmp_path / "big.html", *options)
        assert page.stat().st_size < 2_000_000
        open_page(browser, page)
        assert segments(browser) == drawn
    click(browser, "g.seg")
    assert details(browser).startswith("#1 SYN")


def test_notebook_cell_shows_the_page_or_the_picture(browser: Any, tmp_path: Path) -> None:
    import handshake_viz as hv

    cell = hv.load(CAPTURES / "echo.pcap").connections[0].show()._repr_mimebundle_()["text/html"]
    wrapper = "<!DOCTYPE html><html><body>{}</body></html>"
    (tmp_path / "cell.html").write_text(wrapper.format(cell), encoding="utf-8")
    browser.get((tmp_path / "cell.html").as_uri())
    frame = css(browser, "iframe")[0]
    assert frame.is_displayed() and not css(browser, "img")[0].is_displayed()
    browser.switch_to.frame(frame)
    try:
        deadline = time.perf_counter() + HUNG_S
        while not browser.execute_script("return document.body.getAttribute('data-ready')"):
            assert time.perf_counter() < deadline
            time.sleep(0.05)
        assert segments(browser) == 14
    finally:
        browser.switch_to.default_content()
    # where scripts may not run, the static picture stays
    blocked = ('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" '
               "content=\"script-src 'none'\"></head><body>{}</body></html>")
    (tmp_path / "static.html").write_text(blocked.format(cell), encoding="utf-8")
    browser.get((tmp_path / "static.html").as_uri())
    assert css(browser, "img")[0].is_displayed() and not css(browser, "iframe")[0].is_displayed()


# ---------------------------------------------------------------------------------------
# what the PNG draws, on the page too: time margin, leader lines, grouped calls, layers
# ---------------------------------------------------------------------------------------

KERNEL = REPO / "tests" / "data" / "kernel"


def grouped_echo(directory: Path) -> Path:
    """captures/echo with five quick setsockopt() on the client's socket before its
    connect(): drawn as one bar, ``5 × setsockopt(18)``."""
    import json

    pcap = directory / "grouped.pcap"
    shutil.copy(CAPTURES / "echo.pcap", pcap)
    lines = [json.loads(line) for line in (CAPTURES / "echo.calls.jsonl").read_text().splitlines()]
    connect = next(c for c in lines if c["call"] == "connect")
    sock = [c for c in lines if c["call"] == "socket" and c["start"] < connect["start"]][-1]
    opts = [dict(connect, call="setsockopt", start=sock["end"] + 5e-6 + 15e-6 * i,
                 end=sock["end"] + 10e-6 + 15e-6 * i, ret=0, args="SOL_SOCKET, SO_REUSEADDR, [1], 4",
                 frames=[], conn=None, local=None, remote=None) for i in range(5)]
    at = lines.index(connect)
    lines[at:at] = opts
    (directory / "grouped.calls.jsonl").write_text("".join(json.dumps(c) + "\n" for c in lines))
    return pcap


def test_time_margin_and_leader_lines_as_the_png_draws_them(browser: Any, tmp_path: Path) -> None:
    import handshake_viz as hv
    from handshake_viz.layout import plan_trace

    pcap = CAPTURES / "backlog.pcap"
    open_page(browser, plot_html(pcap, tmp_path / "backlog.html", "--all"))
    trace = hv.load(pcap)
    layout = plan_trace(trace.connections, calls=trace.calls)
    segments(browser)
    times = [t.get_attribute("textContent") for t in css(browser, "g.seg text.time")]
    assert times == [r.margin_text for r in layout.arrow_rows if r.margin_text]  # each time once
    gaps = [t.get_attribute("textContent") for t in css(browser, "text.gap")]
    assert gaps == [r.gap_text for r in layout.rows if r.gap_text] and "+0.3 s" in gaps
    assert len(css(browser, "line.leader")) == sum(b.leader is not None for b in layout.calls) > 0
    assert errors(browser) == []


def test_a_grouped_bar_unfolds_into_its_calls_on_click(browser: Any, tmp_path: Path) -> None:
    open_page(browser, plot_html(grouped_echo(tmp_path), tmp_path / "grouped.html"))
    (group,) = css(browser, "g.call.group")
    assert group.find_element("css selector", ".call-label").text == "5 × setsockopt(18)"
    click(browser, "g.call.group rect.bar")
    assert not css(browser, "g.call.group")
    members = css(browser, "g.members g.call.member")
    assert [m.find_element("css selector", ".call-label").text for m in members] == ["setsockopt(18)"] * 5
    ids = {m.get_attribute("data-call") for m in members}
    assert len(ids) == 5  # each call its own, with its own details
    click(browser, f'g.member[data-call="{members[2].get_attribute("data-call")}"] text')
    assert details(browser).startswith("setsockopt(18)") and "SO_REUSEADDR" in details(browser)
    click(browser, "g.refold-group text")
    assert len(css(browser, "g.call.group")) == 1 and not css(browser, "g.members")
    assert errors(browser) == []


def test_kernel_layer_state_verdict_on_hover_queue_and_drop(browser: Any, tmp_path: Path) -> None:
    open_page(browser, plot_html(KERNEL / "backlog.pcap", tmp_path / "kb.html", "--all", "--windows"))
    segments(browser)
    assert len(css(browser, "g.state.agree")) > 10
    hover(browser, "g.state.linux rect")
    shown = details(browser)
    assert shown.startswith("SYN-RECEIVED") and "Linux reports this step differently" in shown
    assert "SYN_RECV" in shown and "request mini-socket" in shown  # the note, reachable
    assert css(browser, "g.queue rect.slot.full")
    assert "accept queue: 2 queued, backlog 1 (full)" in [t.get_attribute("textContent") for t in css(browser, "text.queue-text")]
    (drop,) = css(browser, "g.seg path.drop-cross")
    row = drop.find_element("xpath", "..")
    assert row.get_attribute("data-frame") == "11"
    click(browser, 'g.seg[data-frame="11"] line.arrow')
    assert "TCP_LISTEN_OVERFLOW" in details(browser)  # the JSONL's "kernel" object
    assert len(css(browser, "g.strip-row")) > 10
    browser.find_element("css selector", '#tabs button[data-tab="story"]').click()
    assert "Linux frees a SYN that finds the accept queue full" in browser.find_element("id", "story").text
    assert errors(browser) == []


def test_explain_markers_lead_to_their_sentence(browser: Any, tmp_path: Path) -> None:
    open_page(browser, plot_html(CAPTURES / "echo.pcap", tmp_path / "ex.html", "--explain", "--lang", "en"))
    segments(browser)
    markers = css(browser, "g.marker.story")
    assert len(markers) >= 10
    click(browser, 'g.marker[data-number="2"] rect')
    current = browser.find_element("css selector", "#story li.current")
    assert current.get_attribute("data-number") == "2" and "SYN-ACK #2" in current.text
    assert errors(browser) == []
