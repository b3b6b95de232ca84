"""Per-speaker pooling of file predictions into the ``speakers`` table.

Each file contributes its calibrated log-odds, weighted by its seconds of speech times its
confidence; the speaker's ``p_male`` is the sigmoid of that weighted mean (a mean, not a sum, since
files of one speaker are not independent evidence). ``agreement`` is the share of the speaker's
confident files whose label matches the speaker's side; ``files_disagree`` flags speakers with at least two
confident files of which more than ``SpeakerParams.disagreement`` are on the other side of the
pooled answer: the files split, or uncertain files with more speech outweigh them. A speaker is labelled
``female``/``male`` only when the pooled confidence reaches ``SpeakerParams.confidence_threshold``,
at least one of its files was labelled, and its files do not disagree; else ``uncertain``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from grv_batch._params import Params

#: per-file columns never carried into the speakers table
_PER_FILE = {
    "file_id", "path", "status", "error", "p_male", "confidence", "label", "reason", "speech_s",
    "duration_s", "sample_rate", "channels", "n_windows", "format", "subtype",
}

#: the columns of ``speakers`` before each member's ``p_male_<member>``, with their types (an
#: empty table keeps them, so readers see the same schema with or without speakers)
SPEAKER_DTYPES = {"speaker_id": "string", "n_files": "int64", "n_confident": "int64", "p_male": "float64",
                  "confidence": "float64", "label": "string", "agreement": "float64", "files_disagree": "bool"}
SPEAKER_COLUMNS = list(SPEAKER_DTYPES)


class SpeakerParams(Params):
    """How speakers are found and when a speaker is labelled or flagged."""

    #: regex with a named group ``speaker`` applied (re.search) to ``path`` when a file has no
    #: ``speaker_id`` in the metadata, e.g. ``"(?P<speaker>[^/]+)/[^/]+$"`` for speaker folders
    from_path: str | None = None
    #: minimum pooled confidence for a female/male speaker label, else ``uncertain``
    confidence_threshold: float = Field(0.8, ge=0.5, le=1.0)
    #: flag ``files_disagree`` when more than this share of a speaker's confident files take the
    #: other side (needs at least 2 confident files)
    disagreement: float = Field(0.2, ge=0.0, le=1.0)

    @field_validator("from_path")
    @classmethod
    def _regex_has_speaker_group(cls, v):
        if v is not None:
            try:
                rx = re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regex: {exc}") from exc
            if "speaker" not in rx.groupindex:
                raise ValueError("from_path needs a named group (?P<speaker>...)")
        return v


def speaker_from_path(path: str | None, pattern: str | None) -> str | None:
    """Speaker of one file from its path with the job's regex (named group ``speaker``), or None."""
    if not pattern or path is None:
        return None
    match = re.search(pattern, str(path))
    return match.group("speaker") if match and match.group("speaker") else None


def speaker_ids(predictions: pd.DataFrame, params: SpeakerParams) -> pd.Series:
    """The speaker of each row: metadata ``speaker_id`` where given, else derived from ``path``."""
    n = len(predictions)
    if "speaker_id" in predictions.columns:
        sid = predictions["speaker_id"].astype("object").where(predictions["speaker_id"].notna(), None)
    else:
        sid = pd.Series([None] * n, index=predictions.index, dtype="object")
    if params.from_path and "path" in predictions.columns:
        missing = sid.isna()
        if missing.any():
            sid = sid.copy()
            sid[missing] = predictions.loc[missing, "path"].map(
                lambda path: speaker_from_path(path, params.from_path))
    return sid.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def _logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p) - np.log1p(-p)


def _pooled(p: pd.Series, speech: np.ndarray) -> float:
    """Sigmoid of the mean log-odds of the finite ``p``, weighted by ``speech`` times each file's
    confidence (by confidence alone when none of them has speech); NaN when none is finite."""
    p = pd.to_numeric(p, errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(p)
    if not ok.any():
        return float("nan")
    conf = np.maximum(p[ok], 1 - p[ok])
    w = speech[ok] * conf
    if w.sum() <= 0:                          # no speech measured: weight by confidence alone
        w = conf
    return float(1 / (1 + np.exp(-np.sum(w * _logit(p[ok])) / w.sum())))


def aggregate_speakers(predictions: pd.DataFrame, *, params: SpeakerParams | None = None) -> pd.DataFrame:
    """One row per speaker (files without a speaker are left out)."""
    params = params or SpeakerParams()
    df = predictions.copy()
    df["speaker_id"] = speaker_ids(df, params)
    df = df[df["speaker_id"].notna()]
    member_cols = [c for c in df.columns if c.startswith("p_male_")]
    if df.empty:
        return pd.DataFrame({**{c: pd.Series(dtype=t) for c, t in SPEAKER_DTYPES.items()},
                             **{c: pd.Series(dtype="float64") for c in member_cols}})
    ok = np.isfinite(pd.to_numeric(df["p_male"], errors="coerce").to_numpy(dtype=np.float64))
    speech = (pd.to_numeric(df["speech_s"], errors="coerce").to_numpy(dtype=np.float64)
              if "speech_s" in df.columns else np.ones(len(df)))
    speech = np.where(np.isfinite(speech) & (speech > 0), speech, 0.0)
    df = df.assign(_speech=speech,
                   _conf_file=(df["label"].isin(["female", "male"]) if "label" in df.columns else ok))
    # a metadata column describes the speaker when it is constant within (at least half of the)
    # speakers; a speaker whose files differ (a mislabelled file) gets null there, not the others
    constant = {c: df.groupby("speaker_id", sort=True)[c].nunique(dropna=False) <= 1
                for c in df.columns
                if c not in _PER_FILE and c != "speaker_id" and not c.startswith("_")
                and c not in member_cols and c not in SPEAKER_COLUMNS}
    carry = [c for c, same in constant.items() if same.mean() >= 0.5]
    rows = []
    for sid, g in df.groupby("speaker_id", sort=True):
        g_speech = g["_speech"].to_numpy()
        pm = _pooled(g["p_male"], g_speech)
        pm = 0.5 if np.isnan(pm) else pm
        confidence = max(pm, 1 - pm)
        side = "male" if pm > 0.5 else "female"
        confident = g[g["_conf_file"]]
        n_conf = int(len(confident))
        agreement = float((confident["label"] == side).mean()) if n_conf else float("nan")
        disagree = bool(n_conf >= 2 and (1 - agreement) > params.disagreement)
        # labelled only when pooled evidence is confident, some file was labelled on its own,
        # and the labelled files do not split
        labelled = confidence >= params.confidence_threshold and n_conf > 0 and not disagree
        row = {"speaker_id": sid, "n_files": int(len(g)), "n_confident": n_conf, "p_male": pm,
               "confidence": confidence, "label": side if labelled else "uncertain",
               "agreement": agreement, "files_disagree": disagree}
        # each member's column is pooled as p_male is, with that member's own confidence (as
        # combine_file pools a file's windows)
        for c in member_cols:
            row[c] = _pooled(g[c], g_speech)
        for c in carry:
            row[c] = g[c].iloc[0] if constant[c][sid] else None
        rows.append(row)
    return pd.DataFrame(rows)
