"""``python -m gramspec``: the command line."""

import sys

from gramspec.cli import main

sys.exit(main())
