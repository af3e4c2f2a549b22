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

html_title = f"taskgraph {release}"
html_static_path = ["_static"]
html_css_files = ["taskgraph.css"]
# The API sidebar lists names alone (``TaskGraph``), not ``taskgraph.TaskGraph``.
toc_object_entries_show_parents = "hide"

try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # the docs extra is missing: Sphinx's own theme, widened
    html_theme = "alabaster"
    html_theme_options = {
        "description": "A persistent dependency-graph build engine",
        "fixed_sidebar": True,
        "page_width": "1240px",
        "sidebar_width": "260px",
    }
else:
    # The theme of numpy, xarray and pandas.
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navbar_align": "left",
        "header_links_before_dropdown": 5,
        "show_toc_level": 2,
        "secondary_sidebar_items": ["page-toc"],
        "navigation_with_keys": False,
        "footer_start": ["copyright"],
        "footer_end": ["sphinx-version"],
    }
    # Pages without pages of their own need no section navigation on the left.
    html_sidebars = {page: [] for page in ("index", "api", "changelog", "design")}
