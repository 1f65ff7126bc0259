"""The soak runs only when asked for (`make soak MINUTES=10`): it is minutes long by design."""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("CAPTURE_SOAK_MINUTES") else ["test_soak.py"]
