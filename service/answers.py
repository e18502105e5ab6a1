"""Registry rows as wire models: the fields a row has under the model's own names are copied, the rest given.

The wire models live in diet_client/models.py; this keeps each route's conversion down to
what differs between the table and the answer (a relationship's name, a renamed column).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def from_row(model: type[M], row: object, **given: Any) -> M:
    """`model` filled from `row`'s attributes of the same names, and from `given` for the fields it names."""
    copied = {name: getattr(row, name) for name in model.model_fields if name not in given}
    return model(**copied, **given)
