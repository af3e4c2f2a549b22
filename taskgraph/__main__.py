"""``python -m taskgraph``: the same as the ``taskgraph`` command."""

import sys

from taskgraph._cli import main

sys.exit(main())
