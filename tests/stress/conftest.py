# The stress scripts run for minutes and are started by hand (see
# docs/reliability.md); the quick kill loop runs from tests/test_reliability.py.
collect_ignore_glob = ["*.py"]
