"""Lead scores, their breakdowns and the broker's weights."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="", tags=["scoring"])
