"""The one title every figure of a run carries: what was measured, on what, trained how."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def run_title(identity: Mapping[str, Any], extra: str = "") -> str:
    """``"<dataset> (<variant>), <model>, <training> seed <seed>"`` from a run's identity columns,
    followed by ``", <extra>"`` when given."""
    title = (f"{identity.get('dataset')} ({identity.get('variant')}), {identity.get('model')}, "
             f"{identity.get('training')} seed {identity.get('seed')}")
    return f"{title}, {extra}" if extra else title
