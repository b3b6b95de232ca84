"""Models: bundle verification, safe-mode loading, ensemble prediction and per-file combination."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from grv_batch.models import (  # noqa: E402
    SHIPPED_BUNDLE, BundleError, ModelParams, clear_cache, load_ensemble, verify_bundle, write_bundle,
)
from grv_batch.models import ensemble as ensemble_mod  # noqa: E402
from grv_batch.models.ensemble import decide  # noqa: E402
from grv_batch.models.testing import DEFAULT_PROFILE_COLUMNS, make_tiny_bundle  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def _inputs(n: int, rng=None, n_frames: int = 420):
    rng = rng or np.random.default_rng(0)
    feats = pd.DataFrame({c: rng.normal(size=n) for c in DEFAULT_PROFILE_COLUMNS})
    feats["mel128"] = [rng.gamma(1.0, 1.0, 128).astype(np.float32) for _ in range(n)]
    logmels = [rng.normal(size=(64, n_frames)).astype(np.float32) for _ in range(n)]
    return feats, logmels


def test_tiny_bundle_predicts_right_shapes(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    assert ens.members == ["cv_mel", "voice_profile", "frames"]
    feats, logmels = _inputs(5)
    logmels[2] = np.zeros((64, 50), np.float32)     # short window: padded to one crop
    out = ens.predict_windows(feats, logmels)
    assert list(out.columns) == ["p_male_cv_mel", "p_male_voice_profile", "p_male_frames", "p_male"]
    assert len(out) == 5
    assert np.isfinite(out.to_numpy()).all()
    assert ((out.to_numpy() >= 0) & (out.to_numpy() <= 1)).all()
    ident = ens.identity
    assert ident["name"] == "tiny-test" and set(ident["files"]) >= {"ensemble.json", "cv_mel.keras"}


def test_missing_member_input_is_nan_and_ensemble_uses_the_rest(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    feats, logmels = _inputs(3)
    logmels[1] = None
    out = ens.predict_windows(feats, logmels)
    assert np.isnan(out.loc[1, "p_male_frames"])
    assert np.isfinite(out["p_male"]).all()
    assert len(ens.predict_windows(feats.iloc[:0], [])) == 0


def test_a_window_p_male_does_not_depend_on_the_other_windows_of_its_batch(tmp_path):
    """One window without a member's input (a short or silent one) used to send every window of
    the same predict call through the fallback mean instead of the fitted combiner."""
    stack = {"weights": {"cv_mel": 0.2, "voice_profile": 1.5, "frames": 0.9}, "bias": 0.7,
             "calibration": {"type": "platt", "a": 1.3, "b": -0.2}}
    ens = load_ensemble(make_tiny_bundle(tmp_path / "stacked", combiner=stack))
    feats, logmels = _inputs(4)
    alone = [ens.predict_windows(feats.iloc[[i]], [logmels[i]]).loc[0, "p_male"] for i in range(4)]
    logmels[3] = None
    together = ens.predict_windows(feats, logmels)["p_male"].to_numpy()
    np.testing.assert_allclose(together[:3], alone[:3], rtol=1e-6)
    assert abs(together[3] - alone[3]) > 1e-6, "the window without logmel uses the fallback"


def test_frames_member_weighs_crops_by_their_speech(tiny_bundle):
    """Crops of pauses and silence carry no weight: the network's answer there is no evidence.
    A window whose second half is silence gets the logit of its speech crops alone."""
    from grv_batch.models.members import crop_speech_shares, crops, member_logits, predict_rows

    ens = load_ensemble(tiny_bundle)
    model, config = ens._models["frames"], ens.spec["members"]["frames"].get("config", {})
    feats, (logmel,) = _inputs(1, n_frames=900)             # 9 s: crops start at 0, 1.5, ... 6 s
    speech = np.arange(900) < 450                             # speech in the first 4.5 s only
    shares = crop_speech_shares(speech)
    np.testing.assert_allclose(shares, [1.0, 1.0, 0.5, 0.0, 0.0])
    raw = predict_rows(model, np.stack(crops(logmel))[..., None])
    weighted = member_logits("frames", model, feats, [logmel], config, speech=[speech])[0]
    assert weighted == pytest.approx(np.average(raw, weights=shares), rel=1e-5)
    unweighted = member_logits("frames", model, feats, [logmel], config)[0]
    assert unweighted == pytest.approx(np.mean(raw), rel=1e-5)
    no_speech = member_logits("frames", model, feats, [logmel], config, speech=[np.zeros(900, bool)])
    assert no_speech[0] == pytest.approx(np.mean(raw), rel=1e-5), "no speech at all: plain mean"


def test_load_is_cached_per_process(tiny_bundle):
    assert load_ensemble(tiny_bundle) is load_ensemble(tiny_bundle)


def test_tensorflow_retracing_notices_do_not_reach_the_console(tiny_bundle, caplog):
    """Batches are padded to powers of two, each traced once: not "excessive retracing"."""
    from tensorflow.python.platform import tf_logging

    load_ensemble(tiny_bundle)
    # what TensorFlow logs after five traces of one function (seen with 8 kHz and MP3 corpora)
    tf_logging.warning("5 out of the last 11 calls to <function f> triggered tf.function retracing.")
    tf_logging.warning("another warning")
    assert [r.getMessage() for r in caplog.records if r.name == "tensorflow"] == ["another warning"]


def test_member_subset(tiny_bundle):
    ens = load_ensemble(tiny_bundle, params=ModelParams(members=["cv_mel"]))
    feats, logmels = _inputs(2)
    out = ens.predict_windows(feats, logmels)
    assert list(out.columns) == ["p_male_cv_mel", "p_male"]
    np.testing.assert_allclose(out["p_male"], out["p_male_cv_mel"], rtol=1e-6)
    with pytest.raises(BundleError, match="no member"):
        load_ensemble(tiny_bundle, params=ModelParams(members=["nope"]))


def test_hash_mismatch_is_refused_before_loading(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "cv_mel.keras", "ab") as fh:
        fh.write(b"\0")
    called = []
    monkeypatch.setattr(ensemble_mod, "_load_models", lambda *a, **k: called.append(1))
    clear_cache()
    with pytest.raises(BundleError, match="sha256 mismatch for cv_mel.keras"):
        load_ensemble(bad)
    assert not called


def test_tampered_config_json_is_refused(tiny_bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad2"
    shutil.copytree(tiny_bundle, bad)
    spec = json.loads((bad / "ensemble.json").read_text())
    spec["thresholds"]["confidence_threshold"] = 0.0
    (bad / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="ensemble.json"):
        verify_bundle(bad)
    (bad / "cv_mel.keras").unlink()
    with pytest.raises(BundleError):
        verify_bundle(bad)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_ensemble(tmp_path)


def test_unsafe_lambda_layer_is_refused_by_safe_mode(tmp_path):
    import keras

    inp = keras.Input((128,))
    out = keras.layers.Dense(1)(keras.layers.Lambda(lambda t: t * 2.0)(inp))
    model = keras.Model(inp, out)
    b = write_bundle(tmp_path / "lam", name="lambda", version="0",
                     members={"cv_mel": {"kind": "cv_mel", "model": model, "config": {}}},
                     combiner={"weights": {"cv_mel": 1.0}, "bias": 0.0}, thresholds={})
    verify_bundle(b)                        # hashes are fine: refusal must come from safe mode
    with pytest.raises(ValueError, match="(?i)unsafe|safe_mode|lambda"):
        load_ensemble(b)


def test_a_bundle_holds_trained_weights_without_optimizer_state(tmp_path):
    import io
    import zipfile

    import h5py
    import keras

    inp = keras.Input((128,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 128), np.float32), np.ones(8, np.float32), epochs=1, verbose=0)
    b = write_bundle(tmp_path / "fitted", name="fitted", version="0",
                     members={"cv_mel": {"kind": "cv_mel", "model": model, "config": {}}},
                     combiner={"weights": {"cv_mel": 1.0}, "bias": 0.0}, thresholds={})
    with zipfile.ZipFile(b / "cv_mel.keras") as z:
        stored = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        assert "optimizer" not in stored
    clear_cache()
    loaded = load_ensemble(b)._models["cv_mel"]
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])
    # the shipped bundle too
    with zipfile.ZipFile(Path(SHIPPED_BUNDLE) / "frames.keras") as z:
        assert "optimizer" not in h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")


def test_a_member_file_that_is_not_keras_v3_is_refused(tiny_bundle, tmp_path):
    """Keras loads HDF5 without safe mode: a bundle may only name .keras files, hashes or not."""
    import shutil

    from grv_batch.models.bundle import MANIFEST, sha256_file

    bad = tmp_path / "h5"
    shutil.copytree(tiny_bundle, bad)
    (bad / "cv_mel.keras").rename(bad / "cv_mel.h5")
    spec = json.loads((bad / "ensemble.json").read_text())
    spec["members"]["cv_mel"]["file"] = "cv_mel.h5"
    (bad / "ensemble.json").write_text(json.dumps(spec))
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["files"] = {("cv_mel.h5" if f == "cv_mel.keras" else f): None for f in manifest["files"]}
    manifest["files"] = {f: sha256_file(bad / f) for f in manifest["files"]}
    (bad / MANIFEST).write_text(json.dumps(manifest))
    verify_bundle(bad)                      # intact: the refusal is about the format
    clear_cache()
    with pytest.raises(BundleError, match="not a .keras file"):
        load_ensemble(bad)


# --- combine_file known answers -------------------------------------------------------------------


def _win(ps_by_member: dict, p: list) -> pd.DataFrame:
    d = {f"p_male_{m}": v for m, v in ps_by_member.items()}
    d["p_male"] = p
    return pd.DataFrame(d)


def test_combine_too_little_speech_is_uncertain(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    w = _win({"cv_mel": [0.99], "voice_profile": [0.99], "frames": [0.99]}, [0.99])
    row = ens.combine_file(w, speech_s=np.array([0.4]), params=ModelParams())
    assert row["label"] == "uncertain" and row["reason"] == "too_little_speech"
    assert row["p_male"] == pytest.approx(0.99)
    empty = ens.combine_file(w.iloc[:0], speech_s=np.zeros(0), params=ModelParams())
    assert empty["label"] == "uncertain" and empty["reason"] == "too_little_speech"
    assert empty["p_male"] == 0.5 and empty["confidence"] == 0.5
    # windows without any speech (silence, noise): what the networks say about them is no evidence
    quiet = ens.combine_file(w, speech_s=np.array([0.0]), params=ModelParams())
    assert quiet["p_male"] == 0.5 and quiet["reason"] == "too_little_speech"
    assert quiet["p_male_frames"] == pytest.approx(0.99)


def test_combine_takes_no_evidence_from_silent_windows_when_the_speech_has_no_answer(tiny_bundle):
    # the window with speech has no usable input for any member; the silent one has answers
    ens = load_ensemble(tiny_bundle)
    w = _win({"cv_mel": [np.nan, 0.99], "voice_profile": [np.nan, 0.99], "frames": [np.nan, 0.99]},
             [np.nan, 0.99])
    row = ens.combine_file(w, speech_s=np.array([5.0, 0.0]), params=ModelParams())
    assert row["p_male"] == 0.5 and row["label"] == "uncertain" and row["reason"] == "low_confidence"
    assert np.isnan(row["p_male_frames"])


def test_decide_never_labels_a_missing_probability():
    label, reason = decide(np.array([np.nan, 0.99]), np.array([[np.nan], [0.99]]), np.array([5.0, 5.0]),
                           confidence_threshold=0.9, disagreement=0.9, min_speech_s=1.0)
    assert list(label) == ["uncertain", "male"] and list(reason) == ["low_confidence", None]


def test_combine_confident_agreeing_windows_gives_label(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    w = _win({"cv_mel": [0.05, 0.1], "voice_profile": [0.02, 0.04], "frames": [0.1, 0.03]}, [0.03, 0.05])
    row = ens.combine_file(w, speech_s=np.array([3.0, 3.0]), params=ModelParams())
    assert row["label"] == "female" and row["reason"] is None
    assert 0.03 < row["p_male"] < 0.05
    assert row["confidence"] == pytest.approx(1 - row["p_male"])
    assert set(row) == {"p_male", "p_male_cv_mel", "p_male_voice_profile", "p_male_frames", "confidence",
                        "label", "reason"}
    m = ens.combine_file(_win({"cv_mel": [0.97], "voice_profile": [0.95], "frames": [0.99]}, [0.98]),
                         speech_s=[5.0], params=ModelParams())
    assert m["label"] == "male" and m["p_male"] == pytest.approx(0.98)


def test_combine_weights_by_speech_and_confidence(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    # a long confident male window outweighs a short unsure female-leaning one
    w = _win({"cv_mel": [0.95, 0.4], "voice_profile": [0.95, 0.4], "frames": [0.95, 0.4]}, [0.95, 0.4])
    row = ens.combine_file(w, speech_s=np.array([8.0, 1.0]), params=ModelParams())
    z = (8 * 0.95 * np.log(0.95 / 0.05) + 1 * 0.6 * np.log(0.4 / 0.6)) / (8 * 0.95 + 1 * 0.6)
    assert row["p_male"] == pytest.approx(1 / (1 + np.exp(-z)))
    # windows without speech carry no weight
    row0 = ens.combine_file(w, speech_s=np.array([5.0, 0.0]), params=ModelParams())
    assert row0["p_male"] == pytest.approx(0.95)


def test_combine_low_confidence_and_members_disagree(tiny_bundle):
    ens = load_ensemble(tiny_bundle)
    low = ens.combine_file(_win({"cv_mel": [0.6], "voice_profile": [0.65], "frames": [0.7]}, [0.66]),
                           speech_s=[4.0], params=ModelParams())
    assert low["label"] == "uncertain" and low["reason"] == "low_confidence"
    dis = ens.combine_file(_win({"cv_mel": [0.05], "voice_profile": [0.97], "frames": [0.95]}, [0.9]),
                           speech_s=[4.0], params=ModelParams(disagreement=0.5))
    assert dis["label"] == "uncertain" and dis["reason"] == "members_disagree"
    ok = ens.combine_file(_win({"cv_mel": [0.05], "voice_profile": [0.97], "frames": [0.95]}, [0.9]),
                          speech_s=[4.0], params=ModelParams(disagreement=0.95))
    assert ok["label"] == "male"
    lenient = ens.combine_file(_win({"cv_mel": [0.6], "voice_profile": [0.65], "frames": [0.7]}, [0.66]),
                               speech_s=[4.0], params=ModelParams(confidence_threshold=0.6))
    assert lenient["label"] == "male"


def test_model_params_reject_unknown_keys():
    with pytest.raises(Exception):
        ModelParams(confidence=0.9)


# --- the shipped bundle ------------------------------------------------------------------------------


def test_shipped_bundle_verifies_loads_and_predicts():
    manifest = verify_bundle(SHIPPED_BUNDLE)
    size = sum((SHIPPED_BUNDLE / f).stat().st_size for f in manifest["files"])
    assert size < 10 * 2**20, "bundle must stay a few MB"
    ens = load_ensemble()
    assert ens.members == manifest["members"]
    cols = ens.spec["members"].get("voice_profile", {}).get("config", {}).get("feature_columns", [])
    rng = np.random.default_rng(1)
    feats = pd.DataFrame({c: rng.normal(size=4) for c in cols})
    feats["mel128"] = [rng.gamma(1.0, 0.01, 128).astype(np.float32) for _ in range(4)]
    logmels = [rng.normal(-5, 2, size=(64, 300)).astype(np.float32) for _ in range(4)]
    out = ens.predict_windows(feats, logmels)
    assert list(out.columns) == [f"p_male_{m}" for m in ens.members] + ["p_male"]
    assert out.shape == (4, len(ens.members) + 1)
    assert np.isfinite(out["p_male"]).all()
    ident = ens.identity
    assert ident["version"] and ident["files"] == manifest["files"]


def test_shipped_cv_mel_is_gain_invariant():
    ens = load_ensemble(params=ModelParams(members=["cv_mel"]))
    rng = np.random.default_rng(2)
    mel = rng.gamma(1.0, 0.01, (3, 128))
    a = ens.predict_windows(pd.DataFrame({"mel128": list(mel)}), None)
    b = ens.predict_windows(pd.DataFrame({"mel128": list(mel * 100.0)}), None)
    # cv_mel has no weight in the shipped stack; alone, it is the answer (not NaN)
    assert np.isfinite(a["p_male"]).all()
    np.testing.assert_allclose(a["p_male"], a["p_male_cv_mel"], atol=1e-9)
    np.testing.assert_allclose(a["p_male"], b["p_male"], atol=1e-4)


@pytest.mark.data
@pytest.mark.skipif(not (SHARED / "commonvoice-mel128" / "features.parquet").is_file(),
                    reason="needs ../shared/data/commonvoice-mel128 (not part of the repository)")
def test_shipped_cv_mel_on_common_voice_sample():
    df = pd.read_parquet(SHARED / "commonvoice-mel128" / "features.parquet").iloc[-2000:]
    ens = load_ensemble(params=ModelParams(members=["cv_mel"]))
    out = ens.predict_windows(df[["mel128"]], None)
    acc = ((out["p_male"] > 0.5) == (df["gender"].to_numpy() == "male")).mean()
    assert acc > 0.93          # trained on these clips: a sanity check, not a held-out metric


def test_a_member_without_stack_weight_answers_when_it_is_the_only_one():
    z = ensemble_mod.combine_logits(np.array([[1.5, np.nan, np.nan], [1.5, -1.0, np.nan],
                                              [np.nan, np.nan, np.nan]]),
                                    np.array([0.0, 0.6, 0.7]), 0.1, None)
    assert z[0] == 1.5 and z[1] == -1.0 and np.isnan(z[2])
