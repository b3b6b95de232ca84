"""Audio features for gender recognition by voice.

One module per feature family (``mfcc``, ``pitch``, ``formants``, ``mel128``, ``spectral``,
``quality``); :mod:`~grv_batch.features.analysis` composes them with the audio stages. The columns
are documented in ``docs/features.md``.
"""

from grv_batch.features.analysis import (
    FEATURE_COLUMNS,
    AnalysisParams,
    FileAnalysis,
    WindowAnalysis,
    analyze_file,
    analyze_window,
    feature_columns,
    iter_windows,
    pool_windows,
)
from grv_batch.features.params import FeatureParams

__all__ = [
    "FEATURE_COLUMNS",
    "AnalysisParams",
    "FeatureParams",
    "FileAnalysis",
    "WindowAnalysis",
    "analyze_file",
    "analyze_window",
    "feature_columns",
    "iter_windows",
    "pool_windows",
]
