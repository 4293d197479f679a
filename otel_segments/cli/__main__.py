"""``python -m otel_segments.cli``: the same as the ``otel-segments`` command."""

import sys

from . import main

sys.exit(main())
