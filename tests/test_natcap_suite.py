"""natcap taskgraph 0.11.2's own test suite, run against this package.

The sdist is downloaded from PyPI into a cache outside the repository (nothing
of it is kept in the project). Tests that reach into natcap's private helpers,
threads or database tables are deselected; docs/design.md lists them and what
replaces them here. Every other test must pass.
"""

import os
import subprocess
import sys
import tarfile
import textwrap

import pytest

VERSION = "0.11.2"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "taskgraph-compat")

# Each reaches into natcap's internals, not its public API.
PRIVATE = {
    "test_empty_task": "reads natcap's private `taskgraph_data` table",
    "test_task_chain_single_thread": "reads natcap's private `taskgraph_data` table",
    "test_malformed_taskgraph_database": "checks natcap's private table layout",
    "test_get_file_stats": "imports taskgraph.Task._get_file_stats",
    "test_filter_non_files": "imports taskgraph.Task._filter_non_files and _normalize_path",
    "test_very_long_string": "imports taskgraph.Task._get_file_stats",
    "test_kwargs_hashed": "reads Task._task_id_hash",
    "test_same_timestamp_and_value": "reads Task._task_id_hash",
    "test_terminate_log": "reads TaskGraph._logging_monitor_thread and _execution_monitor_thread",
    "test_history_rst_format": "checks natcap's HISTORY.rst",
}

RETRYING_SHIM = textwrap.dedent('''
    """Just enough of the `retrying` package for natcap's tests."""
    import functools, time

    def retry(stop_max_attempt_number=5, wait_exponential_multiplier=100,
              wait_exponential_max=1000, **_ignored):
        def decorate(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                for attempt in range(stop_max_attempt_number):
                    try:
                        return func(*args, **kwargs)
                    except Exception:
                        if attempt == stop_max_attempt_number - 1:
                            raise
                        time.sleep(min(wait_exponential_multiplier * 2 ** attempt,
                                       wait_exponential_max) / 1000)
            return wrapper
        return decorate
''')


def natcap_tests(tmp_path):
    archive = os.path.join(CACHE, f"taskgraph-{VERSION}.tar.gz")
    if not os.path.exists(archive):
        os.makedirs(CACHE, exist_ok=True)
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"taskgraph=={VERSION}", "-d", CACHE],
            capture_output=True, text=True, timeout=300,
        )
        if download.returncode != 0 or not os.path.exists(archive):
            pytest.skip(f"cannot download natcap taskgraph {VERSION}: {download.stderr[-500:]}")
    with tarfile.open(archive) as tar:
        member = tar.getmember(f"taskgraph-{VERSION}/tests/test_task.py")
        (tmp_path / "test_task.py").write_bytes(tar.extractfile(member).read())
    (tmp_path / "retrying.py").write_text(RETRYING_SHIM)
    return tmp_path / "test_task.py"


def test_natcap_public_api_suite_passes(tmp_path):
    suite = natcap_tests(tmp_path)
    deselect = [f"--deselect=test_task.py::TaskGraphTests::{name}" for name in PRIVATE]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite.name), "-q", "-p", "no:cacheprovider",
         "--timeout=120", *deselect],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "passed" in summary and "failed" not in summary
