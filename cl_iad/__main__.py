"""`python -m cl_iad` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
