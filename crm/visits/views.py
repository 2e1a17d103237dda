"""Property visits."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/visits", tags=["visits"])
