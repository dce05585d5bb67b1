"""Resource specifications: what a task may ask of the executor.

Values travel to the server as JSON, so a specification must be a dict with
string keys and JSON-compatible values; anything else is an
``InvalidResourceSpecification`` naming the key. Keys this executor does not
use are accepted with a warning (logged once per key), because Parsl's generic
apps and tests pass keys meant for other executors.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Set

from parsl.executors.errors import InvalidResourceSpecification

logger = logging.getLogger(__name__)

KNOWN_KEYS: Set[str] = set()
_warned: Set[str] = set()


def normalize_spec(spec: Any) -> Dict[str, Any]:
    """Validate a task's resource specification and return a JSON-safe copy."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise InvalidResourceSpecification({"<spec>"}, f"resource specification must be a dict, got {type(spec).__name__}")
    clean: Dict[str, Any] = {}
    for key, value in spec.items():
        if not isinstance(key, str):
            raise InvalidResourceSpecification({str(key)}, "resource specification keys must be strings")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise InvalidResourceSpecification({key}, f"value of {key!r} is not JSON-serializable: {exc}") from exc
        if key not in KNOWN_KEYS and key not in _warned:
            _warned.add(key)
            logger.warning("Resource specification key %r is not used by DragonExecutor; ignoring it", key)
        clean[key] = value
    return clean
