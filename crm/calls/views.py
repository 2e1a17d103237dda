"""Calls, their turns, summaries and latency, for review."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/calls", tags=["calls"])
