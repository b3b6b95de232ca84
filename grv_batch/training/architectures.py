"""Keras architectures of the ensemble members (built-in layers only, so safe-mode loading works).

Every member outputs one raw logit for P(male).
"""

from __future__ import annotations

import numpy as np


def cv_mel_model(prepared_train: np.ndarray | None = None, seed: int = 0, n_bands: int = 128):
    """MLP over gain-normalised log mel means (n_bands,)."""
    import keras

    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization(name="standardise")
    if prepared_train is not None:
        norm.adapt(prepared_train)
        n_bands = int(prepared_train.shape[1])
    else:
        norm.build((None, n_bands))
    inp = keras.Input((n_bands,), name="logmel128")
    x = norm(inp)
    x = keras.layers.GaussianNoise(0.05)(x)
    for units in (256, 256, 128):
        x = keras.layers.Dense(units, activation="gelu")(x)
        x = keras.layers.Dropout(0.25)(x)
    out = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(inp, out, name="cv_mel")


def voice_profile_model(n_features: int, seed: int = 0, width: int = 64):
    """Small MLP over standardised voice statistics (standardisation lives in the bundle JSON)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_features,), name="profile")
    x = keras.layers.GaussianNoise(0.1)(inp)
    x = keras.layers.Dense(width, activation="gelu", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(width // 2, activation="gelu", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
    x = keras.layers.Dropout(0.2)(x)
    out = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(inp, out, name="voice_profile")


def frames_model(n_mels: int = 64, n_frames: int = 300, seed: int = 0, width: int = 16, time_pool: int = 1):
    """Small CNN over a log-mel crop with global average pooling (time and frequency)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((n_mels, n_frames, 1), name="logmel_crop")
    x = inp
    if time_pool > 1:   # 100 -> 100/time_pool frames per second: pitch lives in frequency
        x = keras.layers.AveragePooling2D((1, time_pool))(x)
    for i, ch in enumerate((width, width * 2, width * 4, width * 4)):
        x = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("relu")(x)
        x = keras.layers.MaxPooling2D((2, 2) if i < 3 else (2, 1))(x)
    # average over time keeps frequency structure, then pool frequency
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    out = keras.layers.Dense(1, name="logit")(x)
    return keras.Model(inp, out, name="frames")
