"""`python -m vdev.cli` runs the `vdev` command line."""

import sys

from vdev.cli import main

sys.exit(main())
