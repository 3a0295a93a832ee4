"""`python -m recce` (and `torchrun -m recce train ...`) run the command line."""

import sys

from recce.cli import main

sys.exit(main())
