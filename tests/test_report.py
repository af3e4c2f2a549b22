"""``taskgraph report``: one self-contained HTML page, every name escaped,
rendered by a real headless browser where one is installed."""

import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

from taskgraph._cli import main

EVIL = [
    '<img src="http://probe.taskgraph.invalid/name.png">',
    "</svg></div><script>alert('x')</script>",
    "\"quoted\" & 'apostrophe' <b>bold</b>",
    "bell\x07 escape\x1b[31m del\x7f",
    "é 中文 🚀 url(http://probe.taskgraph.invalid/css)",
]

PIPELINE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import history_funcs, taskgraph
    NAMES = {names!r}
    if __name__ == "__main__":
        ws = sys.argv[1]
        graph = taskgraph.TaskGraph(ws, 2)
        tasks = []
        for index, name in enumerate(NAMES):
            target = os.path.join(ws, f"out{{index}}.txt")
            tasks.append(graph.add_task(history_funcs.write, args=(target, index), target_path_list=[target],
                                        dependent_task_list=tasks[-1:], task_name=name))
        graph.add_task(history_funcs.parse, args=("not a number",), dependent_task_list=tasks,
                       task_name="parse <input>")
        graph.close()
        try:
            graph.join()
        except ValueError:
            sys.exit(3)
""")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A workspace whose run made five tasks with hostile names and one failure, and its report."""
    root = tmp_path_factory.mktemp("report")
    script = root / "pipeline.py"
    script.write_text(PIPELINE.format(tests=os.path.dirname(__file__), names=EVIL))
    ws = root / "ws"
    ws.mkdir()
    run = subprocess.run([sys.executable, str(script), str(ws)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    out = root / "report.html"
    assert main(["report", str(ws), "-o", str(out)]) == 0
    return out


class Elements(html.parser.HTMLParser):
    """Every start tag with its attributes, and the text, as a browser's parser sees them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags = []
        self.text = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page):
    parser = Elements()
    parser.feed(page)
    return parser


def test_the_page_is_self_contained_and_escapes_every_name(report):
    page = report.read_text(encoding="utf-8")
    parsed = parse(page)
    tags = [tag for tag, _ in parsed.tags]
    # Nothing that could load anything: no script, style sheet, image, frame or external reference.
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(tags)
    for tag, attrs in parsed.tags:
        for name, value in attrs.items():
            if name in ("src", "href") or (name == "marker-end"):
                assert value.startswith("#") or value.startswith("url(#"), (tag, name, value)
    assert "@import" not in page and not re.search(r"url\((?!#)", page.split("</style>")[1].split("<svg")[0])
    csp = [attrs["content"] for tag, attrs in parsed.tags if tag == "meta" and attrs.get("http-equiv")]
    assert csp == ["default-src 'none'; style-src 'unsafe-inline'; img-src data:"]
    # The names are text, whole and escaped.
    text = "".join(parsed.text)
    for name in EVIL[:3]:
        assert name in text
    assert "bell\\x07 escape\\x1b[31m del\\x7f" in text and "\x07" not in page and "\x1b" not in page
    assert "é 中文 🚀" in text
    # The graph, the timeline, the costs, the failure and the plan are there.
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    assert {"graph", "timeline", "cost-wall", "cost-cpu", "plan", "failures", "next-run"} <= ids
    nodes = [attrs for tag, attrs in parsed.tags if tag == "g" and attrs.get("class", "").startswith("node ")]
    assert len(nodes) == 6 and sum("state-failed" in node["class"] for node in nodes) == 1
    # The chain of five, and the failed task's five dependencies (recorded with its failure).
    assert len([1 for tag, attrs in parsed.tags if tag == "path" and attrs.get("class") == "edge"]) == 9
    bars = [attrs for tag, attrs in parsed.tags if tag == "g" and attrs.get("class", "").startswith("bar ")]
    assert len(bars) == 6
    assert "ValueError: invalid literal for int() with base 10: 'not a number'" in text
    assert 'history_funcs.py", line' in text and "return int(text)" in text
    assert "parse <input>" in text  # in the plan: it would run again, because it failed


class Recorder(http.server.BaseHTTPRequestHandler):
    """A proxy that answers nothing and remembers every request."""

    seen: list = []

    def do_GET(self):
        Recorder.seen.append(self.path)
        self.send_error(404)

    do_CONNECT = do_POST = do_GET

    def log_message(self, *args):
        pass


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(chromium() is None, reason="no chromium: apt-get install chromium to run the browser check")
def test_the_page_renders_in_headless_chromium_without_the_network(report, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Recorder.seen = []
    profile = tempfile.mkdtemp(dir=tmp_path)
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               # Anything the page asked for would reach this recorder, and nothing else.
               f"--proxy-server=http://127.0.0.1:{server.server_port}", "--proxy-bypass-list=<-loopback>",
               "--window-size=1400,2000"]
    try:
        dom = subprocess.run([*command, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                             timeout=120)
        shot = tmp_path / "report.png"
        subprocess.run([*command, f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = parse(dom.stdout)
    tags = parsed.tags
    assert ("svg", "graph") in {(tag, attrs.get("id")) for tag, attrs in tags}
    assert ("svg", "timeline") in {(tag, attrs.get("id")) for tag, attrs in tags}
    assert len([1 for tag, attrs in tags if tag == "g" and attrs.get("class", "").startswith("node ")]) == 6
    assert len([1 for tag, attrs in tags if tag == "g" and attrs.get("class", "").startswith("bar ")]) == 6
    assert not {"script", "img"} & {tag for tag, _ in tags}  # the names stayed text
    assert EVIL[0] in "".join(parsed.text)
    assert not [path for path in Recorder.seen if "probe" in path], Recorder.seen
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_large_graph_is_drawn_by_families_of_names(tmp_path):
    import history_funcs

    import taskgraph

    with taskgraph.TaskGraph(str(tmp_path), -1) as graph:
        roots = [graph.add_task(history_funcs.parse, args=(str(index),), task_name=f"tile {index}")
                 for index in range(320)]
        graph.add_task(None, dependent_task_list=roots, task_name="mosaic")
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path), "-o", str(out)]) == 0
    parsed = parse(out.read_text(encoding="utf-8"))
    nodes = [attrs for tag, attrs in parsed.tags if tag == "g" and attrs.get("class", "").startswith("node ")]
    assert len(nodes) == 2
    text = "".join(parsed.text)
    assert "321 tasks, drawn as 2 families of names" in text and "tile # (x320)" in text
