"""Per-speaker pooling known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grv_batch.speakers import SpeakerParams, aggregate_speakers


def _preds(rows):
    return pd.DataFrame(rows, columns=["file_id", "path", "speaker_id", "p_male", "confidence", "label",
                                       "speech_s", "p_male_cv_mel", "gender", "accent"])


def _row(fid, spk, p, speech=3.0, label=None, gender="male", accent="a", path=None):
    conf = max(p, 1 - p)
    if label is None:
        label = ("male" if p > 0.5 else "female") if conf >= 0.8 else "uncertain"
    return (fid, path or f"{spk}/{fid}.wav", spk, p, conf, label, speech, p, gender, accent)


def test_pools_log_odds_weighted_by_speech_and_confidence():
    df = _preds([_row("a", "s1", 0.9, speech=10.0), _row("b", "s1", 0.3, speech=2.0),
                 _row("c", "s2", 0.1, gender="female", accent="b")])
    sp = aggregate_speakers(df, params=SpeakerParams()).set_index("speaker_id")
    w = np.array([10 * 0.9, 2 * 0.7])
    z = (w[0] * np.log(9) + w[1] * np.log(0.3 / 0.7)) / w.sum()
    assert sp.loc["s1", "p_male"] == pytest.approx(1 / (1 + np.exp(-z)))
    assert sp.loc["s1", "p_male_cv_mel"] == pytest.approx(sp.loc["s1", "p_male"])
    assert sp.loc["s1", "n_files"] == 2 and sp.loc["s1", "n_confident"] == 1
    assert sp.loc["s1", "label"] == "male"
    assert sp.loc["s2", "p_male"] == pytest.approx(0.1) and sp.loc["s2", "label"] == "female"
    assert sp.loc["s2", "confidence"] == pytest.approx(0.9)
    # metadata constant per speaker is carried over; per-file columns are not
    assert sp.loc["s1", "gender"] == "male" and sp.loc["s2", "accent"] == "b"
    assert "path" not in sp.columns and "file_id" not in sp.columns
    for c in ["n_files", "n_confident", "p_male", "confidence", "label", "agreement", "files_disagree"]:
        assert c in sp.columns


def test_disagreeing_files_are_flagged_and_uncertain():
    df = _preds([_row("a", "s1", 0.95), _row("b", "s1", 0.05), _row("c", "s1", 0.9, speech=3.5)])
    sp = aggregate_speakers(df, params=SpeakerParams()).iloc[0]
    assert sp["n_confident"] == 3
    assert sp["agreement"] == pytest.approx(2 / 3)
    assert bool(sp["files_disagree"]) is True
    assert sp["label"] == "uncertain"           # pooled evidence is weak
    agree = aggregate_speakers(_preds([_row("a", "s1", 0.95), _row("b", "s1", 0.9)]), params=SpeakerParams()).iloc[0]
    assert agree["agreement"] == 1.0 and not agree["files_disagree"] and agree["label"] == "male"


def test_split_speaker_is_uncertain_even_when_one_side_outweighs_the_other():
    """A mislabelled speaker_id: three confident male files, three confident female ones with more
    speech. The pooled mean leans female past the threshold, but the files split."""
    rows = [_row(f"m{i}", "s1", 0.998, speech=2.0) for i in range(3)]
    rows += [_row(f"f{i}", "s1", 0.002, speech=3.5, gender="female") for i in range(3)]
    sp = aggregate_speakers(_preds(rows), params=SpeakerParams()).iloc[0]
    assert sp["confidence"] >= 0.8 and bool(sp["files_disagree"]) and sp["label"] == "uncertain"


def test_speaker_without_any_labelled_file_is_uncertain():
    rows = [_row(f"x{i}", "s1", 0.87, speech=0.6, label="uncertain") for i in range(3)]
    sp = aggregate_speakers(_preds(rows), params=SpeakerParams()).iloc[0]
    assert sp["n_confident"] == 0 and sp["confidence"] >= 0.8 and sp["label"] == "uncertain"


def test_metadata_varying_within_a_speaker_is_not_carried():
    df = _preds([_row("a", "s1", 0.9, accent="x"), _row("b", "s1", 0.9, accent="y")])
    sp = aggregate_speakers(df, params=SpeakerParams())
    assert "accent" not in sp.columns and sp.loc[0, "gender"] == "male"


def test_one_inconsistent_speaker_does_not_drop_a_column_for_the_others():
    df = _preds([_row("a", "s1", 0.9), _row("b", "s1", 0.9, gender="female"),  # mislabelled
                 _row("c", "s2", 0.9), _row("d", "s2", 0.95),
                 _row("e", "s3", 0.1, gender="female"), _row("f", "s3", 0.05, gender="female")])
    sp = aggregate_speakers(df, params=SpeakerParams()).set_index("speaker_id")
    assert sp.loc["s2", "gender"] == "male" and sp.loc["s3", "gender"] == "female"
    assert pd.isna(sp.loc["s1", "gender"])


def test_speakers_from_path_when_metadata_lacks_them():
    df = _preds([_row("a", None, 0.9, path="spk1/x.wav"), _row("b", None, 0.8, path="spk1/y.wav"),
                 _row("c", "given", 0.1, path="spk2/z.wav"), _row("d", None, 0.2, path="loose.wav")])
    sp = aggregate_speakers(df, params=SpeakerParams(from_path=r"(?P<speaker>[^/]+)/[^/]+$"))
    assert sorted(sp["speaker_id"]) == ["given", "spk1"]     # loose.wav has no speaker
    assert sp.set_index("speaker_id").loc["spk1", "n_files"] == 2
    no_rx = aggregate_speakers(df, params=SpeakerParams())
    assert sorted(no_rx["speaker_id"]) == ["given"]


def test_speaker_params_validate_regex():
    with pytest.raises(ValueError, match="speaker"):
        SpeakerParams(from_path=r"([^/]+)/")
    with pytest.raises(ValueError):
        SpeakerParams(from_path=r"(?P<speaker>")


def test_no_speakers_gives_empty_table_with_columns():
    df = _preds([_row("a", None, 0.9)])
    sp = aggregate_speakers(df, params=SpeakerParams())
    assert len(sp) == 0 and {"speaker_id", "n_files", "p_male", "label"} <= set(sp.columns)
    # typed as a table with speakers is, not Parquet's null type (readers see one schema)
    import pyarrow as pa

    from grv_batch.storage import plain_strings

    types = {f.name: f.type for f in plain_strings(pa.Table.from_pandas(sp, preserve_index=False)).schema}
    assert types["speaker_id"] == pa.string() and types["n_files"] == pa.int64()
    assert types["p_male"] == pa.float64() and types["files_disagree"] == pa.bool_()
    assert not any(pa.types.is_null(t) for t in types.values())


def test_without_speech_column_weights_by_confidence():
    df = _preds([_row("a", "s", 0.9), _row("b", "s", 0.6)]).drop(columns=["speech_s"])
    sp = aggregate_speakers(df, params=SpeakerParams()).iloc[0]
    z = (0.9 * np.log(9) + 0.6 * np.log(1.5)) / 1.5
    assert sp["p_male"] == pytest.approx(1 / (1 + np.exp(-z)))


def test_metadata_named_like_a_speaker_column_never_replaces_it():
    df = _preds([_row("a", "s1", 0.9), _row("b", "s1", 0.95)]).assign(n_files=7, agreement="x")
    sp = aggregate_speakers(df, params=SpeakerParams()).set_index("speaker_id")
    assert sp.loc["s1", "n_files"] == 2 and sp.loc["s1", "agreement"] == 1.0


def test_member_columns_are_pooled_by_each_members_own_confidence():
    # the member is sure on the short file and unsure on the long one; the ensemble the opposite
    preds = pd.DataFrame({"speaker_id": ["s", "s"], "p_male": [0.55, 0.99], "p_male_frames": [0.99, 0.45],
                          "speech_s": [1.0, 4.0], "label": ["uncertain", "male"]})
    row = aggregate_speakers(preds).iloc[0]
    w = np.array([1.0 * 0.99, 4.0 * 0.55])
    z = np.sum(w * np.log(np.array([0.99, 0.45]) / np.array([0.01, 0.55]))) / w.sum()
    assert row["p_male_frames"] == pytest.approx(1 / (1 + np.exp(-z)))
