"""Train and evaluate the ``cv_mel`` member (128 mel means, Common Voice) against the original network.

    python -m grv_batch.training.cv_mel compare --commonvoice ../shared/data/commonvoice-mel128/features.parquet \
        --seed-model ../shared/anchors/seed-model.h5 --out /work/scratch/cv_mel_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from grv_batch.models.melspace import add_noise, augment_batch, band_centres, log_mel_normalised, telephone
from grv_batch.training.metrics import binary_metrics, markdown_table


def load_commonvoice(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    df = pd.read_parquet(path, columns=["gender", "mel128"])
    X = np.stack(df["mel128"].to_numpy()).astype(np.float32)
    y = (df["gender"].to_numpy() == "male").astype(np.float32)
    return X, y


def original_split(X, y):
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=0.1, random_state=7)


def build_seed_model(weights: str | os.PathLike | None = None):
    """The original project's network, per ../shared/data/README.md (input: raw mel means)."""
    import keras

    inp = keras.Input((128,))
    x = keras.layers.Dense(256)(inp)
    x = keras.layers.Dropout(0.3)(x)
    for units in (256, 128, 128, 64):
        x = keras.layers.Dense(units, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inp, out)
    if weights is not None:
        model.load_weights(str(weights))
    return model


def build_cv_mel_model(prepared_train: np.ndarray, seed: int = 0):
    """Gain-invariant MLP over normalised log mel means; outputs a logit for P(male)."""
    from grv_batch.training.architectures import cv_mel_model

    return cv_mel_model(prepared_train, seed)


#: the shipped preprocessing of cv_mel (stored in the bundle's member config)
CV_MEL_CONFIG = {"n_bands": 115, "floor_db": 50.0}


def train_cv_mel(X: np.ndarray, y: np.ndarray, *, epochs: int = 30, seed: int = 0, verbose: int = 0,
                 augment: bool = True, config: dict | None = None, telephone_p: float = 0.3):
    """Train with fresh mel-domain augmentation every epoch. ``X`` is raw mel128 power.

    ``config`` is the member preprocessing (``n_bands``, ``floor_db``), default :data:`CV_MEL_CONFIG`.
    """
    import keras

    config = CV_MEL_CONFIG if config is None else config
    nb, fl = config.get("n_bands"), config.get("floor_db")
    rng = np.random.default_rng(seed)
    aug = (lambda a: augment_batch(a, rng, telephone_p)) if augment else (lambda a: a)
    model = build_cv_mel_model(log_mel_normalised(aug(X[:20000]), nb, fl), seed)
    steps = int(np.ceil(len(X) / 256)) * epochs
    sched = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(sched),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.02))
    for ep in range(epochs):
        h = model.fit(log_mel_normalised(aug(X), nb, fl), y, batch_size=256, epochs=1, shuffle=True, verbose=0)
        if verbose:
            print(f"epoch {ep + 1}/{epochs} loss {h.history['loss'][-1]:.4f}", flush=True)
    return model


def conditions(X: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic test conditions in the mel power domain (gain is on amplitude)."""
    f = band_centres()
    X = X.astype(np.float64)
    return {
        "clean": X,
        "gain x0.1": X * 0.01,
        "gain x10": X * 100.0,
        "telephone 300-3400 Hz": telephone(X, f, atten_db=40, floor_snr_db=35),
        "pink noise 10 dB": add_noise(X, f, 10.0, "pink"),
        "babble noise 5 dB": add_noise(X, f, 5.0, "babble"),
    }


def compare(commonvoice: str, seed_model: str, *, epochs: int = 30, seed: int = 0, save: str | None = None,
            load: str | None = None):
    import keras

    X, y = load_commonvoice(commonvoice)
    Xtr, Xte, ytr, yte = original_split(X, y)
    seed_net = build_seed_model(seed_model)
    if load:
        ours = keras.saving.load_model(load, compile=False, safe_mode=True)
    else:
        ours = train_cv_mel(Xtr, ytr, epochs=epochs, seed=seed, verbose=1)
    if save:
        ours.save(save)
    rows = []
    for name, Xc in conditions(Xte).items():
        p_seed = seed_net.predict(Xc.astype(np.float32), batch_size=2048, verbose=0)[:, 0]
        z = ours.predict(log_mel_normalised(Xc, CV_MEL_CONFIG["n_bands"], CV_MEL_CONFIG["floor_db"]),
                         batch_size=2048, verbose=0)[:, 0]
        p_ours = 1 / (1 + np.exp(-z))
        rows.append({"condition": name, "model": "original (seed-model.h5)", **binary_metrics(yte, p_seed)})
        rows.append({"condition": name, "model": "cv_mel (uncalibrated)", **binary_metrics(yte, p_ours)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="original test split: original network vs cv_mel, side by side")
    c.add_argument("--commonvoice", required=True)
    c.add_argument("--seed-model", required=True)
    c.add_argument("--epochs", type=int, default=30)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--save-model", default=None)
    c.add_argument("--load-model", default=None, help="evaluate a saved model instead of training")
    c.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = compare(a.commonvoice, a.seed_model, epochs=a.epochs, seed=a.seed, save=a.save_model, load=a.load_model)
    print(markdown_table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
