"""What a log stream looks like: its fields, tasks and timestamp.

A `StreamSchema` is written by `diet convert` as `schema.json` and is the same
object a client posts to the service when it creates a stream.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoricalField(_Strict):
    """A categorical column, hashed into `buckets` rows of its embedding table.

    Row 0 is reserved for missing values; every other value lands in
    1..buckets-1 (see `diet_engine.data.hashing`).
    """

    name: Name
    buckets: int = Field(default=100_000, ge=2, le=2**31 - 1)


class NumericField(_Strict):
    """A numeric column: its embedding is a learned vector scaled by the value."""

    name: Name


class SplitLayout(_Strict):
    """How a converted directory is cut by time: historical stages, then the rest."""

    history: list[str] = Field(min_length=1)
    subsequent: str
    valid: str
    test: str

    def all(self) -> list[str]:
        return [*self.history, self.subsequent, self.valid, self.test]


class StreamSchema(_Strict):
    name: Name
    fields: list[CategoricalField] = Field(min_length=1)
    numeric: list[NumericField] = Field(default_factory=list)
    labels: list[Name] = Field(min_length=1, max_length=16)
    timestamp: Name
    splits: SplitLayout | None = None

    @model_validator(mode="after")
    def _unique_columns(self) -> "StreamSchema":
        cols = self.columns()
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"column names must be unique, repeated: {dup}")
        return self

    @field_validator("splits")
    @classmethod
    def _split_names(cls, v: SplitLayout | None) -> SplitLayout | None:
        if v is not None:
            names = v.all()
            if len(set(names)) != len(names):
                raise ValueError("split names must be unique")
            for n in names:
                if not re.match(NAME, n):
                    raise ValueError(f"bad split name {n!r}")
        return v

    @property
    def num_fields(self) -> int:
        """F: one embedding slot per categorical and per numeric field."""
        return len(self.fields) + len(self.numeric)

    @property
    def num_tasks(self) -> int:
        return len(self.labels)

    def columns(self) -> list[str]:
        return [f.name for f in self.fields] + [n.name for n in self.numeric] + list(self.labels) + [self.timestamp]
