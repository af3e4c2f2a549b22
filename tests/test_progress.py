"""The progress bar: drawn on a terminal, absent otherwise or when turned off."""

import os
import pty
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import engine_funcs, taskgraph
    if __name__ == "__main__":
        progress = {{"auto": None, "off": False}}[sys.argv[2]]
        with taskgraph.TaskGraph(sys.argv[1], 0, progress=progress) as graph:
            for i in range(20):
                graph.add_task(engine_funcs.sleep, args=(0.005 + i / 10000,), task_name=f"t{{i}}")
""")


def run(tmp_path, mode, tty):
    script = tmp_path / "progress.py"
    script.write_text(SCRIPT.format(tests=os.path.dirname(__file__)))
    command = [sys.executable, str(script), str(tmp_path / f"ws-{mode}-{tty}"), mode]
    if not tty:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_bar_on_a_terminal(tmp_path):
    out = run(tmp_path, "auto", tty=True)
    final = out.replace("\r\n", "\n").split("\r")[-1]
    assert "20/20 tasks" in final and "elapsed" in final and "ETA" in final
    assert final.startswith("[" + "#" * 10)


def test_no_bar_without_a_terminal_or_when_off(tmp_path):
    assert "tasks" not in run(tmp_path, "auto", tty=False)
    assert "tasks" not in run(tmp_path, "off", tty=True)
