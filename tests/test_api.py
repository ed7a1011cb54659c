"""The public API a notebook uses: load, Trace, Connection, plot, to_dataframe, capture."""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import handshake_viz as hv  # noqa: E402
from handshake_viz.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_all_is_sorted_and_exactly_the_public_names():
    # Submodules become package attributes when anything imports them: not API names.
    public = {n for n, v in vars(hv).items() if not n.startswith("_") and not inspect.ismodule(v)}
    public |= {"capture", "load", "plot_connection", "plot_trace", "render_trace", "__version__"}  # lazy
    assert hv.__all__ == sorted(hv.__all__)
    assert set(hv.__all__) == public
    for name in hv.__all__:
        obj = getattr(hv, name)
        if callable(obj) and name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"


def test_load_finds_calls_beside_the_capture():
    trace = hv.load(CAPTURES / "echo.pcap")
    assert trace.calls_path == CAPTURES / "echo.calls.jsonl"
    conn = trace.connections[0]
    assert [s.label.value for s in conn.segments[:3]] == ["SYN", "SYN-ACK", "ACK"]
    assert conn.calls and not conn.calls_inferred
    assert {"connect", "accept4", "close"} <= {c.call for c in conn.calls}
    assert all(c.conn == 0 for c in conn.calls)
    assert "<Trace" in repr(trace) and "<Connection 0" in repr(conn)
    assert "<table>" in trace._repr_html_() and "SYN-ACK" in conn._repr_html_()


def test_without_a_call_log_calls_are_inferred(tmp_path):
    copy = tmp_path / "echo.pcap"
    copy.write_bytes((CAPTURES / "echo.pcap").read_bytes())
    conn = hv.load(copy).connections[0]
    assert conn.calls and conn.calls_inferred
    assert all(c.inferred for c in conn.calls)


def test_plot_draws_on_the_given_axes_and_returns_it():
    conn = hv.load(CAPTURES / "echo.pcap").connections[0]
    fig, ax = plt.subplots()
    assert conn.plot(ax=ax) is ax
    texts = [t.get_text() for t in ax.texts]
    assert "SYN" in texts and "FIN-ACK" in texts
    assert conn._repr_png_().startswith(b"\x89PNG")


def test_to_dataframe_has_one_row_per_segment():
    pd = pytest.importorskip("pandas")
    conn = hv.load(CAPTURES / "echo.pcap").connections[0]
    df = conn.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert len(df) == len(conn.segments)
    assert list(df["label"][:3]) == ["SYN", "SYN-ACK", "ACK"]


def test_bad_input_raises_the_project_error_with_the_cli_message(tmp_path):
    missing = tmp_path / "nope.pcap"
    with pytest.raises(hv.CaptureFileError) as info:
        hv.load(missing)
    err = io.StringIO()
    assert main(["analyze", str(missing)], out=io.StringIO(), err=err) == 2
    assert err.getvalue().strip() == f"hsviz: {info.value}"
    # the library speaks of connections; the CLI maps that to its --conn flag
    with pytest.raises(hv.UsageError, match="no connection 7: the capture has 1 connection$"):
        hv.load(CAPTURES / "echo.pcap", conn=7)


@pytest.mark.parametrize("name", ["multi-client", "backlog", "time-wait"])
def test_one_connection_loaded_alone_is_the_same_as_in_the_whole_trace(name):
    # Loading only some connections (plot --conn) must not change them: another
    # connection's accept() or read() on the same server is that connection's, not a
    # call of no connection drawn on this one's server lane.
    whole = hv.load(CAPTURES / f"{name}.pcap")
    assert len(whole.connections) > 1 and whole.calls_path is not None
    for c in whole.connections:
        alone = hv.load(CAPTURES / f"{name}.pcap", conn=[c.conn])
        assert [a.conn for a in alone.connections] == [c.conn]
        assert alone.connections[0].calls == c.calls
        assert alone.connections[0].segments == c.segments
        assert alone.calls == whole.calls


def test_capture_from_the_api_returns_a_trace(tmp_path, live):
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    ready = threading.Event()

    def client():
        assert ready.wait(20), "the capture never became ready"
        with socket.create_connection(("127.0.0.1", port)) as c:
            conn, _ = srv.accept()
            c.sendall(b"hi")
            conn.recv(2)
            conn.close()

    t = threading.Thread(target=client)
    t.start()
    trace = hv.capture(port, connections=1, timeout=20, output=tmp_path / "api.pcap", on_ready=ready.set)
    t.join()
    srv.close()
    assert trace.connections and trace.connections[0].segments[0].label.value == "SYN"
