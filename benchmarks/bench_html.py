"""How long the interactive page takes to open in a real browser.

Target (issue 17): the page of a 1,000-segment connection is under 2 MB and opens
(drawn, every row) in under 2 s in headless Chromium on the project machine
(2 cores).  This is a benchmark, not a test: a loaded machine makes any browser
slow, and a unit test that judges wall time fails for reasons other than the code
(``tests/test_browser.py`` checks what the page draws, not how fast).

The capture is ``make_capture.py``'s (one connection, 331 request/reply exchanges:
1,000 segments); the pages are made with the CLI, as a user makes them, folded
(the default 60 rows) and unfolded (``--max-rows 0``, with and without
``--explain``).  Each page is opened ``--runs`` times in one browser; the table
shows the median and the slowest, from ``driver.get`` until the page says it has
drawn every row (``data-ready`` and ``data-drawn`` on its body).

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (``pip install -e
'.[test]'``); nothing is downloaded::

    python benchmarks/bench_html.py            # medians of 5
    python benchmarks/bench_html.py --runs 9
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import chromium  # noqa: E402  (the browser tests/test_browser.py uses)
import make_capture as generator  # noqa: E402

TARGET_S = 2.0
TARGET_BYTES = 2_000_000


def make_capture(path: Path) -> int:
    return int(generator.generate(path, 1, 331))


def browser() -> Any:
    return chromium.start(Path(tempfile.mkdtemp(prefix="hsviz-bench-")))


def open_seconds(driver: Any, page: Path) -> tuple[float, float]:
    """Seconds until the page is drawn and usable (``data-ready``: the first screenfuls),
    and until every row is (``data-drawn``)."""
    start = time.perf_counter()
    driver.get(page.as_uri())
    ready = None
    while True:
        state = driver.execute_script("return document.body && [document.body.getAttribute('data-ready'),"
                                      " document.body.getAttribute('data-drawn')]")
        now = time.perf_counter() - start
        if state and state[0] and ready is None:
            ready = now
        if state and state[0] and state[1]:
            return ready if ready is not None else now, now
        if now > 120:
            raise SystemExit(f"{page.name}: not drawn after 120 s")
        time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from handshake_viz.cli import main as hsviz

    with tempfile.TemporaryDirectory(prefix="hsviz-bench-html-") as tmp:
        pcap = Path(tmp) / "big.pcap"
        print(f"capture: {make_capture(pcap)} segments, one connection; {args.runs} runs a page")
        driver = browser()
        try:
            print(f"{'page':<24} {'KB':>5} {'open s':>7} {'max':>6} {'all rows s':>11} {'max':>6}"
                  f"  (open: median < {TARGET_S} s, page < {TARGET_BYTES // 1_000_000} MB)")
            for name, options in (("folded (60 rows)", ()), ("--max-rows 0", ("--max-rows", "0")),
                                  ("--max-rows 0 --explain", ("--max-rows", "0", "--explain"))):
                page = Path(tmp) / f"{len(options)}.html"
                err = io.StringIO()
                if hsviz(["plot", str(pcap), "-o", str(page), *options], out=io.StringIO(), err=err) != 0:
                    print(err.getvalue(), end="", file=sys.stderr)
                    return 1
                open_seconds(driver, page)  # the browser's own first-use costs are not the page's
                runs = [open_seconds(driver, page) for _ in range(args.runs)]
                opened, drawn = [r[0] for r in runs], [r[1] for r in runs]
                size = page.stat().st_size
                ok = statistics.median(opened) < TARGET_S and size < TARGET_BYTES
                print(f"{name:<24} {size / 1000:>5.0f} {statistics.median(opened):>7.2f} {max(opened):>6.2f}"
                      f" {statistics.median(drawn):>11.2f} {max(drawn):>6.2f}  {'met' if ok else 'MISSED'}")
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
