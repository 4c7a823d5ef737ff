"""`python -m relightful` is the `relightful` command."""

import sys

from relightful.cli import main

sys.exit(main())
