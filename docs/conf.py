"""Sphinx configuration: the Markdown pages of docs/ (MyST) and the API
reference from the package's docstrings (autodoc, Google style via napoleon).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(``pip install -e '.[docs]'``). tests/test_docs.py runs the same build.
"""

from __future__ import annotations

import os
import sys

# Document the package of this checkout, also when it is not installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir)))

import taskgraph

project = "taskgraph"
author = "taskgraph contributors"
copyright = "taskgraph contributors"
release = taskgraph.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: ``[text](page.md#a-heading)`` links need heading anchors.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "alabaster"
html_title = f"taskgraph {release}"
html_theme_options = {"description": "A persistent dependency-graph build engine", "fixed_sidebar": True}
