"""The package version (leaf module): the one place it is written.

``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``), so the
installed metadata and ``taskgraph.__version__`` agree, and importing it costs
nothing (``importlib.metadata`` takes about 30 ms to import).
"""

__version__: str = "1.0.0.dev0"
