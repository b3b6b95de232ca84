"""Parameters of the fairness/evaluation report."""

from __future__ import annotations

from pydantic import Field, field_validator

from grv_batch._params import Params


class ReportInputError(ValueError):
    """The run's tables cannot give the report asked for (no predictions, a group column that is
    not there): the user's to fix, reported in one line."""


class ReportParams(Params):
    """How the report groups files and estimates uncertainty.

    Parameters
    ----------
    groups : list of str or None
        Metadata columns to group on. ``None`` (default) picks every carried metadata column with
        2 to 30 distinct values, except ``path``, ``file_id``, ``speaker_id``, ``gender`` and
        free text.
    intersections : list of (str, str)
        Pairs of columns (metadata columns or derived bands) to cross, reported with
        ``group_by = "a*b"`` and ``group = "<value of a>*<value of b>"``.
    n_bootstrap : int
        Bootstrap replicates for every interval (0 disables intervals: they are then null).
    n_permutations : int
        Label permutations for the p-value of each largest gap (0 disables the test).
    min_speakers, min_files : int
        A group with fewer speakers (when speakers are known; a file without a speaker counts as
        one, and a group mixing both counts its effective number of them) or fewer files than
        this, counted over the files a metric is computed on, is flagged ``small`` ("too small to
        compare") and never takes part in the largest gaps. Below about ten speakers a cluster bootstrap
        interval covers the truth far less often than its nominal level (72% at 5 speakers, 88%
        at 10 in a simulation), hence the default of 10.
    confidence_level : float
        Coverage of the bootstrap intervals.
    seed : int
        Seed of the bootstrap and the permutations; the same seed gives the same results.
    derived_bands : bool
        Also group on bands derived from the features: ``speech_duration_band``, ``snr_band``,
        ``bandwidth_band``, ``pitch_band``.
    """

    groups: list[str] | None = None
    intersections: list[tuple[str, str]] = Field(default_factory=list)
    n_bootstrap: int = Field(1000, ge=0)
    n_permutations: int = Field(499, ge=0)
    min_speakers: int = Field(10, ge=1)
    min_files: int = Field(20, ge=1)
    confidence_level: float = Field(0.95, gt=0.0, lt=1.0)
    seed: int = 0
    derived_bands: bool = True

    @field_validator("groups")
    @classmethod
    def _no_duplicate_groups(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("groups must not repeat a column")
        return value
