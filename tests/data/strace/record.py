#!/usr/bin/env python3
"""Re-record the strace fixtures in this directory from the project's own programs.

Run as root from the repository root:  python tests/data/strace/record.py
Needs strace and cc.  The tests assert relations (the client's 4-tuple is the
mirror of the server's, bytes written equal bytes read, ...), not ports or
times, so re-recorded files keep them passing.

Python's start-up reads hundreds of .pyc/.so files; to keep the fixtures small,
lines whose fd is decorated with a file path are thinned to the first three
(they stay to prove that calls on files are filtered out).  Nothing else is
edited; the ``edited-*.txt`` files are the hand-edited variants.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from handshake_viz.tracer import TRACED_SYSCALLS, attach, start_traced

ECHO_PY = REPO / "tests" / "programs" / "echo.py"
ECHO_C = REPO / "tests" / "programs" / "echo.c"
PY = sys.executable
FILE_FD = re.compile(r"\(\d+<(?:/|\\x2f)")  # path decoration, plain or -xx


def thin(src: Path, dst: Path) -> None:
    kept_files = 0
    out = []
    for line in src.read_text(errors="replace").splitlines(keepends=True):
        if FILE_FD.search(line):
            kept_files += 1
            if kept_files > 3:
                continue
        out.append(line)
    dst.write_text("".join(out))
    print(f"{dst.name}: {len(out)} lines")


def traced(name: str, argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        t = start_traced(argv, output=log, as_user=None, stdout=subprocess.DEVNULL)
        status = t.wait(30)
        assert status == 0, (name, status)
        thin(log, HERE / name)


def by_hand(name: str, argv: list[str], flags: list[str], *, to_stderr: bool = False) -> None:
    """strace with other flags: ``to_stderr`` leaves out -o, so pid prefixes come and go."""
    trace = "trace=" + ",".join("?" + s for s in TRACED_SYSCALLS)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        cmd = ["strace", "-f", "-ttt", "-T", "-yy", *flags, "-e", trace]
        if not to_stderr:
            cmd += ["-o", str(log)]
        with open(log, "ab") as err:
            subprocess.run([*cmd, *argv], stdout=subprocess.DEVNULL,
                           stderr=err if to_stderr else None, check=True, timeout=30)
        thin(log, HERE / name)


def attached(name: str, how: str) -> None:
    """Attach to a server blocked in accept(), then kill it or detach."""
    server = subprocess.Popen([PY, str(ECHO_PY), "server"], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    server.stdout.readline()  # "port N": listening, about to block in accept()
    time.sleep(0.1)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log"
        t = attach([server.pid], log)
        time.sleep(0.2)
        if how == "kill":
            server.send_signal(signal.SIGKILL)
            server.wait()
            t.wait(10)
        else:
            t.stop()
            server.kill()
            server.wait()
        thin(log, HERE / name)


def main() -> None:
    os.chdir(HERE)
    traced("py-pair.txt", [PY, str(ECHO_PY), "pair", "hello"])
    traced("py-refused.txt", [PY, str(ECHO_PY), "refused"])
    traced("py-inuse.txt", [PY, str(ECHO_PY), "inuse"])
    traced("py-unread.txt", [PY, str(ECHO_PY), "unread"])
    traced("py-nonblock.txt", [PY, str(ECHO_PY), "nonblock", "hi"])
    traced("py-v6.txt", [PY, str(ECHO_PY), "v6", "hello6"])
    traced("py-interrupted.txt", [PY, str(ECHO_PY), "interrupted"])
    by_hand("py-interrupted-stderr.txt", [PY, str(ECHO_PY), "interrupted"], ["-s", "64"], to_stderr=True)
    by_hand("py-pair-xx.txt", [PY, str(ECHO_PY), "pair", 'hi "there"'], ["-xx", "-s", "8"])
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "echo"
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(ECHO_C)], check=True)
        traced("c-pair.txt", [str(exe), "pair", 'hello "world"\\n'])
    attached("py-attach-killed.txt", "kill")
    attached("py-attach-detached.txt", "detach")


if __name__ == "__main__":
    main()
