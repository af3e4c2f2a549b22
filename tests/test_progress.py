"""Progress as a user sees it: a bar on a real pseudo-terminal, rendered by a
terminal emulator (pyte), with log records printed above it; plain progress
lines when stderr is a file; nothing when turned off.

The pipeline (tests/progress_funcs.py) runs real worker processes whose
tasks log warnings (relayed to the parent's handlers) while the parent logs
its own; one task fails and the graph keeps going.
"""

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import time

import pytest

from taskgraph._progress import Progress

TESTS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {TESTS!r})
    import progress_funcs
    if __name__ == "__main__":
        progress_funcs.main(sys.argv[1:])
""")
BAR = re.compile(r"^\[[#.]+\] ")
# The status line, with its bar or (in a narrow terminal) without.
STATUS = re.compile(r"^(\[[#.]+\] )?(\d+/\d+ done: |adding tasks, |\d+ ran, )")
ROWS = 400
TIMEOUT_S = 120


def script(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(SCRIPT)
    return str(path)


def run_on_pty(command, columns, env=None, interrupt_when=None):
    """Run ``command`` with stdout and stderr on a new pty ``columns`` wide;
    return (exit code, the screen's lines as pyte renders them).

    ``interrupt_when``: a regex; once the output matches it, the process gets
    SIGINT (Ctrl-C)."""
    pyte = pytest.importorskip("pyte", reason="the terminal tests render a pty with pyte: pip install -e '.[test]'")
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, columns, 0, 0))
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower,
                            env={**os.environ, **(env or {})})
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT_S
    interrupted = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{command} did not finish within {TIMEOUT_S} s: {b''.join(chunks)[-2000:]!r}")
            ready, _, _ = select.select([leader], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
            text = b"".join(chunks).decode(errors="replace")
            if interrupt_when and not interrupted and re.search(interrupt_when, text):
                proc.send_signal(signal.SIGINT)
                interrupted = True
        code = proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT_S)
        os.close(leader)
    screen = pyte.Screen(columns, ROWS)
    pyte.ByteStream(screen).feed(b"".join(chunks))
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    assert len(lines) < ROWS, "the output scrolled off the emulated screen: make ROWS larger"
    return code, lines


def bar_lines(lines):
    return [line for line in lines if BAR.match(line)]


def test_logs_go_above_the_bar_and_the_last_line_says_what_failed(tmp_path):
    """The issue's "done when": 120 columns, 40 tasks at n_workers=2, tasks and
    parent log warnings, one task fails, keep_going=True."""
    ws = tmp_path / "ws"
    code, lines = run_on_pty([sys.executable, script(tmp_path), str(ws), "40", "13", "0.05", "early"], 120)
    screen = "\n".join(lines)
    assert code == 0, screen
    # Log records are printed above the bar, each whole on its own line, and
    # the bar is redrawn below: one bar line is left, no line holds both.
    bars = bar_lines(lines)
    assert len(bars) == 1, screen
    for line in lines:
        assert not (BAR.match(line) and ("WARNING" in line or "ERROR" in line or "looks odd" in line)), line
    for index in range(40):
        assert f"WARNING tiles: tile {index} looks odd" in lines, screen  # relayed from the workers
    assert "WARNING pipeline: parent added tile 30" in lines
    assert any(line.startswith("WARNING pipeline: parent heartbeat") for line in lines), screen
    assert "ERROR taskgraph.Task: task 'tile 13' failed: ValueError: tile 13 is broken" in lines
    # The last bar line says what failed, and is not a full bar.
    final = bars[-1]
    assert "39/40 done: 39 ran, 0 skipped, 1 failed ('tile 13')" in final, final
    assert final.startswith("[") and "#]" not in final.split("]")[0] + "]"
    assert all(len(line) <= 119 for line in bars)
    # The 39 independent tasks wrote their targets; join() named the failed task.
    assert sorted(os.listdir(ws)) == sorted([f"tile_{i}.txt" for i in range(40) if i != 13] + [
        name for name in os.listdir(ws) if name.startswith("taskgraph_ledger")])
    assert "join raised TasksFailedError: 1 task failed: 'tile 13' (ValueError: tile 13 is broken)" in screen


def test_progress_lines_in_a_log_then_a_rerun_in_a_narrow_terminal(tmp_path):
    ws = tmp_path / "ws"
    command = [sys.executable, script(tmp_path), str(ws), "40", "13", "0.05", "early"]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                           env={**os.environ, "TASKGRAPH_PROGRESS": "1"})
    assert piped.returncode == 0, piped.stderr
    log = piped.stderr
    assert "\r" not in log and "[#" not in log and ".]" not in log  # no bar characters
    # Through the parent's logging, although it is set to WARNING: progress was asked for.
    progress = [line for line in log.splitlines() if line.startswith("INFO taskgraph: ")]
    assert len(progress) >= 2, log
    assert progress[-1] == progress[-1].split(" - ")[0]  # finished, not stopped
    assert re.fullmatch(r"INFO taskgraph: 39/40 done: 39 ran, 0 skipped, 1 failed \('tile 13'\), 0 cancelled in "
                        r"\d+:\d\d", progress[-1]), progress
    for line in progress[:-1]:
        assert re.search(r"\d+ of 40 tasks done \(\d+%\)|adding tasks", line), line
    assert "WARNING tiles: tile 0 looks odd" in log.splitlines()

    # Rerun in a 50-column terminal with no logging configured (Python's
    # last-resort handler prints the warnings): 39 tasks are up to date.
    code, lines = run_on_pty([*command[:-1], "none"], 50)
    screen = "\n".join(lines)
    assert code == 0, screen
    status = [line for line in lines if STATUS.match(line)]
    assert len(status) == 1, screen
    assert len(status[0]) <= 49, status
    assert "tile 13 looks odd" in lines, screen  # the last resort's format: the message alone
    assert "0 ran, 39 skipped, 1 failed ('tile 13')" in status[0], status


def test_ctrl_c_leaves_a_truthful_last_line(tmp_path):
    ws = tmp_path / "ws"
    code, lines = run_on_pty([sys.executable, script(tmp_path), str(ws), "30", "-1", "0.3", "late"], 100,
                             interrupt_when=r"\] \d+/30 done: [1-9]\d* ran")
    screen = "\n".join(lines)
    assert code != 0 and "KeyboardInterrupt" in screen, screen
    bars = bar_lines(lines)
    assert len(bars) == 1, screen
    final = bars[-1]
    assert final.endswith("- interrupted") and " cancelled" in final and "30/30" not in final, final
    ran = int(re.search(r"(\d+) ran", final)[1])
    cancelled = int(re.search(r"(\d+) cancelled", final)[1])
    assert 1 <= ran < 30 and ran + cancelled == 30, final
    # Logging configured after the graph started is redirected too.
    for line in lines:
        assert not (BAR.match(line) and "WARNING" in line), line


@pytest.mark.parametrize(("setting", "env"), [("progress=False", {}), ("", {"TASKGRAPH_PROGRESS": "0"})])
def test_no_bar_when_turned_off(tmp_path, setting, env):
    path = tmp_path / "off.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import engine_funcs, taskgraph
        with taskgraph.TaskGraph(sys.argv[1], 0, {setting}) as graph:
            for i in range(5):
                graph.add_task(engine_funcs.square, args=(i,), task_name=f"t{{i}}")
    """))
    code, lines = run_on_pty([sys.executable, str(path), str(tmp_path / "ws")], 80, env=env)
    assert code == 0 and lines == [], lines


def test_nothing_on_a_file_unless_asked(tmp_path):
    path = tmp_path / "quiet.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import engine_funcs, taskgraph
        with taskgraph.TaskGraph(sys.argv[1], 0) as graph:
            graph.add_task(engine_funcs.square, args=(2,))
    """))
    quiet = subprocess.run([sys.executable, str(path), str(tmp_path / "ws")], capture_output=True, text=True,
                           timeout=TIMEOUT_S, env={k: v for k, v in os.environ.items() if k != "TASKGRAPH_PROGRESS"})
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    bad = subprocess.run([sys.executable, str(path), str(tmp_path / "ws")], capture_output=True, text=True,
                         timeout=TIMEOUT_S, env={**os.environ, "TASKGRAPH_PROGRESS": "maybe"})
    assert bad.returncode != 0 and "TASKGRAPH_PROGRESS='maybe'" in bad.stderr


class Recorder:
    """A display that keeps what it is shown."""

    def __init__(self):
        self.shown = []

    def update(self, snapshot):
        self.shown.append(snapshot)

    def finish(self, snapshot):
        self.shown.append(snapshot)


def test_the_eta_sums_recorded_durations_spread_over_the_workers():
    progress = Progress(Recorder(), workers=2)
    progress.added(0, 10.0)
    progress.added(1, 30.0)
    progress.added(2, None)  # new: no estimate until one ran or some are recorded
    progress.added(3, None)
    progress.all_added()
    now = time.monotonic()
    # Before anything ran, new tasks count at the mean recorded duration (20 s).
    assert progress.eta(now) == pytest.approx((10 + 30 + 20 + 20) / 2)
    progress.finished(0, "ran", "a", 4.0)  # then at the mean of what ran in this run
    assert progress.eta(now) == pytest.approx((30 + 4 + 4) / 2)
    progress.finished(1, "skipped", "b", 0.0)  # an up-to-date task takes no time
    assert progress.eta(now) == pytest.approx((4 + 4) / 2)
    progress.finished(2, "ran", "c", 8.0)
    assert progress.eta(now) == pytest.approx(6.0)  # one task left: one worker busy
    empty = Progress(Recorder(), workers=4)
    empty.added(0, None)
    assert empty.eta(now) is None  # nothing to go on
