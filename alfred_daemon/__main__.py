"""``python -m alfred_daemon`` is the ``alfred-daemon`` command."""

import sys

from .cli import main

sys.exit(main())
