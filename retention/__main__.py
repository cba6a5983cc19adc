"""``python -m retention`` works like ``retention``."""

import sys

from .cli import main

sys.exit(main())
