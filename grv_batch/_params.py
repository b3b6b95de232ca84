"""Base class for every stage's parameters.

Each stage module defines its own ``XxxParams`` model next to its pure function; the job spec
(:mod:`grv_batch.spec`) composes them. Parameters are frozen and reject unknown keys, so a typo in a
job file is an error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Frozen, strict parameter model shared by all stages."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
