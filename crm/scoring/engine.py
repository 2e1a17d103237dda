"""PLACEHOLDER — the scoring helper replaces this module with the real pure engine."""

from __future__ import annotations

from typing import Any


def placeholder_score() -> tuple[int, dict[str, Any]]:
    return 0, {}
