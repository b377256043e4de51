"""`python -m pylb ...` is `pylb ...`."""

import sys

from pylb.cli import main

sys.exit(main())
