"""Interim bundle with the Common Voice member only (used until the audio members are trained).

    python -m grv_batch.training.cv_only --model /work/scratch/models/cv_mel_full.keras \
        --compare /work/scratch/cv_mel_compare.json --out grv_batch/models/bundle
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grv_batch.models.bundle import write_bundle
from grv_batch.training.metrics import markdown_table


def main(argv=None):
    import keras

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--compare", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    model = keras.saving.load_model(a.model, compile=False, safe_mode=True)
    rows = json.loads(Path(a.compare).read_text())
    card = {
        "members": {"cv_mel": {
            "data": "66,938 Common Voice clips (all rows of commonvoice-mel128/features.parquet), balanced F/M",
            "features": "mel128 (time-mean 128-band mel power, 22.05 kHz), log10, minus mean over bands (gain-invariant)",
            "augmentation": "mel domain: spectral tilt, additive noise spectra (white/pink/brown/babble/hum, 0-30 dB SNR), "
                            "telephone band 300-3400 Hz with noise floor, low-pass 4-8 kHz, gain +-40 dB",
            "evaluation": rows,
        }},
        "combiner": "single member, uncalibrated (label smoothing 0.02)",
    }
    md = ["# grv-batch model bundle (interim: Common Voice member only)", "",
          "Member `cv_mel`: " + card["members"]["cv_mel"]["features"] + ".", "",
          "## Original test split (train_test_split(test_size=0.1, random_state=7)), model trained on the other 90%", "",
          markdown_table(rows), "",
          "Command: `python -m grv_batch.training.cv_mel compare --commonvoice ../shared/data/commonvoice-mel128/features.parquet "
          "--seed-model ../shared/anchors/seed-model.h5`", "",
          "The shipped model is the same recipe trained on all 66,938 clips.", ""]
    write_bundle(a.out, name="grv-batch-cv-only", version="0.1.0-cv", members={
        "cv_mel": {"kind": "cv_mel", "model": model, "config": {}, "calibration": {"type": "identity"}}},
        combiner={"weights": {"cv_mel": 1.0}, "bias": 0.0, "calibration": {"type": "identity"}},
        thresholds={"confidence_threshold": 0.8, "disagreement": 0.6}, model_card=card, model_card_md="\n".join(md))


if __name__ == "__main__":
    main()
