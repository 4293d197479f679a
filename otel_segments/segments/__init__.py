"""Per-user segments: database -> rules -> :class:`UserSegment`, which the sinks deliver.

May import: settings/, runtime/, spans/ (names only). Never a sink or the job: segments are computed, not sent, here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UserSegment:
    """One user's computed person properties, as PostHog names them.

    ``set`` holds what may change (``$set``), ``set_once`` what is written once
    (``$set_once``). No value is ever None: unknown properties are left out.
    """

    distinct_id: str
    set: dict[str, Any] = field(default_factory=dict)
    set_once: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """A stable hash of the properties that matter for delivery (``last_segment_update`` excluded)."""
        payload = {
            "set": {k: v for k, v in self.set.items() if k != "last_segment_update"},
            "set_once": self.set_once,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
