"""The one funnel for list endpoints: tenant scope, sorting, stable paging, total count.

Every list starts from `scoped(model, broker_id)`, so no list can forget the tenant;
`page` sorts by a whitelisted column with `id` as tie-breaker, so rows never repeat or
vanish between pages when sort values are equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from crm.errors import InvalidInput, field_error

M = TypeVar("M")
T = TypeVar("T")


class Order(StrEnum):
    asc = "asc"
    desc = "desc"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = 50
    offset: int = 0
    sort: str | None = None
    order: Order = Order.desc


def scoped(model: type[M], broker_id: int) -> Select[M]:
    """`SELECT model WHERE broker_id = :broker_id`: the start of every tenant list."""
    column: Any = model.broker_id  # type: ignore[attr-defined]
    return select(model).where(column == broker_id)


def page(
    db: Session,
    stmt: Select[M],
    request: PageRequest,
    *,
    sortable: Mapping[str, InstrumentedAttribute[Any]],
    default_sort: str,
    id_column: InstrumentedAttribute[Any],
) -> tuple[Sequence[M], int]:
    """One page of `stmt` and the total number of rows it matches."""
    sort = request.sort or default_sort
    if sort not in sortable:
        raise InvalidInput(
            f"cannot sort by {sort!r}",
            errors=[field_error("sort", f"choose one of: {', '.join(sorted(sortable))}")],
        )
    column = sortable[sort]
    if request.order is Order.desc:
        ordered = stmt.order_by(column.desc(), id_column.desc())
    else:
        ordered = stmt.order_by(column.asc(), id_column.asc())
    items = db.scalars(ordered.limit(request.limit).offset(request.offset)).all()
    if len(items) < request.limit and (items or request.offset == 0):
        # A short page is the last one, so the total is known without counting. (An empty
        # page past the start says nothing about how many rows there are.)
        total = request.offset + len(items)
    else:
        total = db.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    return items, total
