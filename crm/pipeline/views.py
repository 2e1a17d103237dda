"""Stage changes of one lead and the pipeline metrics."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="", tags=["pipeline"])
