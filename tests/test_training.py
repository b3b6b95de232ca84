"""`grv-batch train` end to end on a tiny synthetic corpus: a loadable, hash-checked bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from _audio import voice
from conftest import grv

from grv_batch.models import load_ensemble

SHIPPED_CV_MEL = Path(__file__).parents[1] / "grv_batch" / "models" / "bundle" / "cv_mel.keras"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """Two 'corpora' x 4 speakers (2 female, 2 male) x 2 clips of 2 s."""
    root = tmp_path_factory.mktemp("train-corpus")
    rows = []
    for corpus in ("a", "b"):
        for s in range(4):
            gender = "female" if s % 2 == 0 else "male"
            f0 = (205.0 if gender == "female" else 110.0) * (1 + 0.04 * s)
            for clip in range(2):
                rel = f"{corpus}/spk{s}/clip{clip}.wav"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(root / rel, voice(2.0, 16000, f0=f0, seed=100 * s + clip), 16000)
                rows.append({"path": rel, "corpus": corpus, "speaker_id": f"{corpus}{s}", "gender": gender})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return root, manifest


def test_train_writes_a_bundle_that_loads_and_predicts(tiny_corpus, tmp_path):
    root, manifest = tiny_corpus
    out, report = tmp_path / "bundle", tmp_path / "report"
    grv("train", "--metadata", str(manifest), "--data-root", str(root), "--out", str(out),
        "--cv-mel-model", str(SHIPPED_CV_MEL), "--folds", "2", "--variants", "clean",
        "--eval-variants", "telephone", "--train-only", "pitch=voice_profile",
        "--epochs", "voice_profile=2,frames=1",
        "--cache", str(tmp_path / "cache"), "--report", str(report), "--workers", "1",
        "--version", "0.0.1-test", timeout=600)

    ensemble = load_ensemble(out)  # checks every file's sha256 and loads in safe mode
    assert ensemble.members == ["cv_mel", "voice_profile", "frames"]
    assert ensemble.identity["version"] == "0.0.1-test"
    assert (out / "model_card.md").read_text().strip()

    summary = json.loads((report / "summary.json").read_text())
    assert summary["eval_variants"] == ["telephone"]
    assert summary["train_only_variants"] == {"pitch": ["voice_profile"]}
    oof = pd.read_parquet(report / "oof_files.parquet")
    # every clip scored out of fold in both conditions, the eval-only one included, the
    # train-only one (voice_profile's pitch-shifted copies) never
    assert len(oof) == 16 * 2 and set(oof["variant"]) == {"clean", "telephone"}
    assert oof["p_ensemble"].between(0, 1).all()
    # a held-out-corpus table for each corpus, and every file's logits from members that never saw it
    assert {r["heldout_corpus"] for r in summary["heldout_corpus"]} == {"a", "b"}
    held = pd.read_parquet(report / "heldout_files.parquet")
    assert len(held) == 16 * 2 and {"z_cv_mel", "z_voice_profile", "z_frames"} <= set(held.columns)
    # coverage at the operating point per held-out corpus, on the fitted condition only (16 clips)
    op = {r["heldout_corpus"]: r for r in summary["heldout_corpus_operating_point"]}
    assert set(op) == {"all, pooled", "a", "b"} and op["all, pooled"]["n"] == 16
    assert 0.0 <= op["all, pooled"]["coverage"] <= 1.0


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--variants", "clean,underwater", "unknown variant(s) underwater"),
    ("--epochs", "frame=3", "unknown member(s) frame"),
    ("--train-only", "pitch=cv_mel", "cv_mel is not an audio member"),
])
def test_train_refuses_unknown_names(tiny_corpus, tmp_path, option, value, message):
    root, manifest = tiny_corpus
    proc = grv("train", "--metadata", str(manifest), "--data-root", str(root), "--out",
               str(tmp_path / "b"), option, value, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "b").exists()


def test_operating_point_is_the_most_coverage_at_the_target_accuracy():
    """Known answer: 10 wrong files, all at confidence 0.9 and with members agreeing, and 990 right
    ones spread over 0.6-1.0. Labelling the wrong ones costs 1% accuracy, so at a 99.5% target
    the threshold must rise just past 0.9; the disagreement rule (members split on some right
    files) only costs coverage, so the most lenient spread on the grid wins."""
    import numpy as np

    from grv_batch.models.ensemble import decide
    from grv_batch.training.train import DISAGREEMENT_GRID, choose_operating_point

    rng = np.random.default_rng(0)
    conf = np.concatenate([np.full(10, 0.9), rng.uniform(0.6, 1.0, 990)])
    male = rng.random(1000) < 0.5
    right = np.arange(1000) >= 10
    p = np.where(male == right, conf, 1 - conf)  # p > 0.5 exactly when (male and right) or (female and wrong)
    members = np.column_stack([p, p, p])
    members[10:60, 0] = 1 - p[10:60]  # one member on the other side for 50 right files
    F = pd.DataFrame({"gender": np.where(male, "male", "female"), "p_ensemble": p, "speech_s": 5.0,
                      "p_a": members[:, 0], "p_b": members[:, 1], "p_c": members[:, 2]})
    op = choose_operating_point(F, ["a", "b", "c"], target=0.995)
    assert 0.9 < op["confidence_threshold"] <= 0.91
    assert op["disagreement"] == max(DISAGREEMENT_GRID)
    label, reason = decide(p, members, F["speech_s"], confidence_threshold=op["confidence_threshold"],
                           disagreement=op["disagreement"], min_speech_s=1.0)
    assert (label[:10] == "uncertain").all() and set(reason[:10]) == {"low_confidence"}
    # the strongest split (0.0 vs 1.0) is still "members disagree" at any spread on the grid
    label, reason = decide([0.9], [[0.0, 1.0, 0.95]], [5.0], confidence_threshold=0.5,
                           disagreement=max(DISAGREEMENT_GRID), min_speech_s=1.0)
    assert reason[0] == "members_disagree"


def test_operating_point_needs_the_target_with_confidence_not_just_on_average():
    """Known answer: 2,000 files, 30 wrong at confidence 0.95 (members agreeing), the rest right
    and spread over 0.6-1.0. Labelling everything is 98.5% right, exactly the target, but that
    shows 98.5% with 95% confidence only if the Wilson lower bound reaches it (it is 98.0%); the
    threshold just past 0.95 drops the 30 errors and keeps ~250 files, all right (bound 98.9%)."""
    import numpy as np

    from grv_batch.training.metrics import wilson_lower_bound
    from grv_batch.training.train import choose_operating_point

    # by hand: (p + z^2/2n - z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.6449
    assert wilson_lower_bound(197, 200, confidence=0.95) == pytest.approx(0.9631, abs=1e-4)
    assert wilson_lower_bound(0, 0) == 0.0
    rng = np.random.default_rng(1)
    conf = np.concatenate([np.full(30, 0.95), rng.uniform(0.6, 1.0, 1970)])
    male = rng.random(2000) < 0.5
    right = np.arange(2000) >= 30
    p = np.where(male == right, conf, 1 - conf)
    F = pd.DataFrame({"gender": np.where(male, "male", "female"), "p_ensemble": p, "speech_s": 5.0,
                      "p_a": p, "p_b": p})
    on_average = choose_operating_point(F, ["a", "b"], target=0.985, confidence=0.5)
    assert on_average["confidence_threshold"] <= 0.6 + 1e-9
    with_confidence = choose_operating_point(F, ["a", "b"], target=0.985, confidence=0.95)
    assert 0.95 < with_confidence["confidence_threshold"] <= 0.96


def test_a_stack_fitted_on_held_out_corpora_trusts_the_member_that_transfers():
    """Known answer: member ``local`` is right and sure on new speakers of known corpora but wrong
    on 30% of a new corpus's files, still sure; member ``steady`` is 85% right everywhere. A stack
    fitted on k-fold logits trusts ``local`` and carries its errors to the held-out corpus; one
    fitted on held-out-corpus logits leans on ``steady``."""
    import numpy as np

    from grv_batch.training.domain import compare

    rng = np.random.default_rng(0)

    def table(local_wrong: float) -> pd.DataFrame:
        n = 300
        male = rng.random(n) < 0.5
        sign = np.where(male, 1.0, -1.0)
        local = 4.0 * sign * np.where(rng.random(n) < local_wrong, -1.0, 1.0)
        steady = 1.5 * sign * np.where(rng.random(n) < 0.15, -1.0, 1.0)
        return pd.DataFrame({"path": [f"f{i}" for i in range(n)], "variant": "clean",
                             "speaker_id": [f"s{i}" for i in range(n)], "corpus": np.repeat(["a", "b", "c"], n // 3),
                             "gender": np.where(male, "male", "female"), "speech_s": 5.0,
                             "z_local": local, "z_steady": steady})

    F, H = table(local_wrong=0.0), table(local_wrong=0.3)
    H["speaker_id"] = F["speaker_id"]
    rows, combiners = compare(F, H, ["local", "steady"], {f"s{i}": i % 5 for i in range(300)})
    acc = {(r["table"], r["stack"]): r["accuracy"] for r in rows if r["corpus"] == "all"}
    # steady alone is right on 85%: the held-out stack gets that, the k-fold one local's 70%
    assert acc[("held-out corpus", "held-out")] >= 0.84 and acc[("held-out corpus", "k-fold")] <= 0.71
    assert acc[("k-fold", "k-fold")] == 1.0  # and in domain, trusting local is right
    kfold = next(c for c in combiners if c["stack"] == "k-fold")
    assert kfold["w_local"] > 5 * kfold["w_steady"]


def test_mobile_variant_is_a_real_call_codec_that_keeps_the_voice():
    # AMR-NB or Opus round trip at 8/16 kHz: the length is kept (a few ms of codec delay) and a
    # 1 kHz tone, well inside every handset band, is still the strongest frequency
    import numpy as np

    from grv_batch.training.augment import MOBILE_CODECS, ffmpeg_roundtrip, make_variant

    sr = 16000
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(2 * sr) / sr)
    rates = set()
    for seed in range(8):
        y, rate = sf.read(make_variant(tone, sr, "mobile", np.random.default_rng(seed)))
        rates.add(rate)
        assert abs(len(y) / rate - 2.0) < 0.05
        spectrum = np.abs(np.fft.rfft(y[rate // 10:]))
        assert np.fft.rfftfreq(len(y) - rate // 10, 1 / rate)[spectrum.argmax()] == pytest.approx(1000, abs=10)
    assert rates == {8000, 16000}
    for codec, container, rate, bit_rates, _ in MOBILE_CODECS:
        x = tone[::2] if rate == 8000 else tone
        y = ffmpeg_roundtrip(0.5 * x, rate, codec, container, bit_rates[0])
        assert abs(len(y) - len(x)) < rate // 20 and np.max(np.abs(y)) > 0.1


def test_the_stack_fit_is_scikit_learns_logistic_regression_held_at_nonnegative_weights():
    """Unconstrained, ``fit_logistic`` is ``LogisticRegression(C=1)``; constrained, a member that
    only helps as a correction of the others (a negative weight) gets zero, and the others keep
    their signs."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from grv_batch.training.train import _fit_combiner, fit_logistic

    rng = np.random.default_rng(0)
    signal = rng.standard_normal(2000)
    y = signal + 0.5 * rng.logistic(size=2000) > 0
    shared = rng.standard_normal(2000)  # noise both members carry: the best linear stack cancels it
    a = 2.0 * signal + shared
    b = 0.5 * signal + shared  # on its own b is right more often than not, but a - b is the better stack
    X = np.column_stack([a, b])
    lr = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(X, y)
    w, bias = fit_logistic(X, y, C=1.0, nonnegative=False)
    np.testing.assert_allclose(w, lr.coef_[0], atol=1e-3)
    assert abs(bias - lr.intercept_[0]) < 1e-3 and w[1] < 0
    comb = _fit_combiner(X, y, ["a", "b"])
    assert comb["weights"]["b"] == 0.0 and comb["weights"]["a"] > 0


@pytest.mark.parametrize("semitones", [-4.0, 4.0])
def test_pitch_variant_moves_f0_and_keeps_the_formants(semitones):
    """A 120 Hz vowel with formants 700/1220/2600 Hz, shifted by WORLD resynthesis: F0 moves by
    the semitones asked for, the formants (the speaker's vocal tract, hence the label) stay."""
    import numpy as np
    from _audio import vowel

    from grv_batch.features import analyze_window
    from grv_batch.training.augment import make_variant, shift_pitch_keep_formants

    sr = 16000
    x = vowel(120.0, 2.0, sr)
    before = analyze_window(x, sr).features
    after = analyze_window(shift_pitch_keep_formants(x, sr, semitones).astype(np.float32), sr).features
    assert after["f0_p50"] == pytest.approx(120.0 * 2 ** (semitones / 12), rel=0.03)
    for k in ("f1_hz", "f2_hz", "f3_hz"):
        assert after[k] == pytest.approx(before[k], rel=0.1)
    y, rate = sf.read(make_variant(x, sr, "pitch", np.random.default_rng(0)))
    assert abs(len(y) / rate - 2.0) < 0.05


def test_pitch_cross_variant_moves_f0_towards_the_other_sex_only():
    """``pitch_cross``: a man's voice goes 2-5 semitones up, a woman's down; it needs the label."""
    import numpy as np
    from _audio import vowel

    from grv_batch.features import analyze_window
    from grv_batch.training.augment import make_variant

    sr = 16000
    for gender, f0, sign in (("male", 120.0, 1), ("female", 220.0, -1)):
        for seed in range(3):
            y, rate = sf.read(make_variant(vowel(f0, 2.0, sr), sr, "pitch_cross", np.random.default_rng(seed),
                                           gender=gender))
            moved = 12 * np.log2(analyze_window(y.astype(np.float32), rate).features["f0_p50"] / f0)
            assert 1.7 < sign * moved < 5.3
    with pytest.raises(ValueError, match="gender"):
        make_variant(vowel(120.0, 1.0, sr), sr, "pitch_cross", np.random.default_rng(0))


def test_pitch_call_variant_is_a_shifted_voice_through_a_call_channel():
    """``pitch_call``: the formant-keeping shift, then the telephone, real-codec telephone or
    mobile channel: out at a call rate, of the same length, with F0 moved 2-5 semitones."""
    import numpy as np
    import soxr
    from _audio import vowel

    from grv_batch.features import analyze_window
    from grv_batch.training.augment import make_variant

    sr = 16000
    x = vowel(120.0, 2.0, sr)
    for seed in range(6):  # seeds 0-5 draw all three channels
        y, rate = sf.read(make_variant(x, sr, "pitch_call", np.random.default_rng(seed)))
        assert rate in (8000, 16000) and abs(len(y) / rate - 2.0) < 0.05
        f0 = analyze_window(soxr.resample(y, rate, sr).astype(np.float32), sr).features["f0_p50"]
        assert 1.7 < abs(12 * np.log2(f0 / 120.0)) < 5.3


def test_cached_features_are_named_by_the_analysis_parameters(monkeypatch, tmp_path):
    """A feature cache (and the members memoised from it) written with other analysis parameters,
    or before FEATURES_VERSION was bumped, is never read back as current."""
    import grv_batch.features
    from grv_batch.features import AnalysisParams
    from grv_batch.training import dataset

    def cache_folder():
        dataset.feature_signature.cache_clear()
        return dataset._cache_file(tmp_path, "a.wav", "clean", 0).parent.name

    now = cache_folder()
    monkeypatch.setattr(grv_batch.features, "AnalysisParams",
                        lambda: AnalysisParams(features={"max_formant_frames": 100}))
    other_params = cache_folder()
    monkeypatch.undo()
    monkeypatch.setattr(dataset, "FEATURES_VERSION", dataset.FEATURES_VERSION + 1)
    other_version = cache_folder()
    monkeypatch.undo()
    assert cache_folder() == now
    assert len({now, other_params, other_version}) == 3 and now.startswith("clean-")


@pytest.mark.parametrize("kind", ["logistic", "boosting"])
def test_classic_members_score_held_out_rows_with_missing_statistics(kind):
    """The classic study's models are fitted on the training rows only and score the others, the
    rows with a missing statistic (no voiced frames) included."""
    import numpy as np

    from grv_batch.training.classic import _logits

    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    X = np.column_stack([np.where(y, 120.0, 210.0) + rng.normal(0, 15, 400), rng.normal(0, 1, 400)])
    X[::10, 0] = np.nan
    train = np.arange(400) < 300
    z = _logits(kind, X, y, train, 0)
    known = np.isfinite(X[~train, 0])
    assert z.shape == (100,) and np.isfinite(z).all()
    assert ((z[known] > 0) == y[~train][known]).mean() > 0.95
