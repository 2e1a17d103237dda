"""Leads: CRUD, filters, timeline, consent, do-not-call, CSV import."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/leads", tags=["leads"])
