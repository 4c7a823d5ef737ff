"""`python -m relightful.cli` (and `torchrun -m relightful.cli`): the `relightful` command."""

import sys

from relightful.cli import main

sys.exit(main())
