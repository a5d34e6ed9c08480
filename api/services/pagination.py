"""Cursor pagination over `seq`: `after` is the public id of the last object of the previous page."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlmodel import Session, select

from api.errors import APIError, shown

T = TypeVar("T")


def page(
    session: Session, stmt: Any, table: type[T], *, after: str | None, limit: int, order: str = "desc"
) -> tuple[list[T], bool]:
    """Run `stmt` (already filtered to the caller's scope) one page at a time; return rows and has_more."""
    if not 1 <= limit <= 10_000:
        raise APIError(400, f"Invalid value for 'limit': must be between 1 and 10000, got {limit}.", param="limit")
    if order not in ("asc", "desc"):
        raise APIError(400, f"Invalid value for 'order': must be 'asc' or 'desc', got {shown(order)}.", param="order")
    seq_col = table.seq  # type: ignore[attr-defined]
    if after is not None:
        anchor = session.exec(stmt.with_only_columns(seq_col).where(table.id == after)).first()  # type: ignore[attr-defined]
        if anchor is None:
            raise APIError(400, f"Invalid value for 'after': no object with id '{after}' in this list.", param="after")
        stmt = stmt.where(seq_col < anchor if order == "desc" else seq_col > anchor)
    stmt = stmt.order_by(seq_col.desc() if order == "desc" else seq_col.asc()).limit(limit + 1)
    rows = list(session.exec(stmt).all())
    return rows[:limit], len(rows) > limit


__all__ = ["page", "select"]
