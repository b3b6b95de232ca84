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
        "--eval-variants", "telephone", "--epochs", "voice_profile=2,frames=1",
        "--cache", str(tmp_path / "cache"), "--report", str(report), "--workers", "1",
        "--version", "0.0.1-test", timeout=600)

    ensemble = load_ensemble(out)  # checks every file's sha256 and loads in safe mode
    assert ensemble.members == ["cv_mel", "voice_profile", "frames"]
    assert ensemble.identity["version"] == "0.0.1-test"
    assert (out / "model_card.md").read_text().strip()

    summary = json.loads((report / "summary.json").read_text())
    assert summary["eval_variants"] == ["telephone"]
    oof = pd.read_parquet(report / "oof_files.parquet")
    # every clip scored out of fold in both conditions, the eval-only one included
    assert len(oof) == 16 * 2 and set(oof["variant"]) == {"clean", "telephone"}
    assert oof["p_ensemble"].between(0, 1).all()
    # a held-out-corpus table for each corpus
    assert {r["heldout_corpus"] for r in summary["heldout_corpus"]} == {"a", "b"}


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--variants", "clean,underwater", "unknown variant(s) underwater"),
    ("--epochs", "frame=3", "unknown member(s) frame"),
])
def test_train_refuses_unknown_names(tiny_corpus, tmp_path, option, value, message):
    root, manifest = tiny_corpus
    proc = grv("train", "--metadata", str(manifest), "--data-root", str(root), "--out",
               str(tmp_path / "b"), option, value, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "b").exists()
