"""Parameters of feature extraction (all frame sizes are at the analysis rate, 16 kHz by default)."""

from __future__ import annotations

from pydantic import Field, model_validator

from grv_batch._params import Params

__all__ = ["FeatureParams"]


class FeatureParams(Params):
    """Parameters shared by the feature families.

    Attributes
    ----------
    n_fft, hop_length : int
        STFT shared by MFCC, spectral shape and log-mel (512 / 160 = 32 ms / 10 ms at 16 kHz).
    n_mfcc, n_mfcc_mels : int
        Number of cepstral coefficients and of mel bands they are computed from.
    delta_width : int
        Odd window length (frames) of the MFCC deltas.
    f0_min_hz, f0_max_hz : float
        Pitch search range.
    pitch_step : int
        Pitch is estimated on every ``pitch_step``-th speech frame (2: every 20 ms), which is plenty
        for percentiles and halves the cost; voiced frames found there also feed the formants.
    voicing_threshold : float
        A frame is voiced when the YIN aperiodicity (cumulative-mean-normalised difference at the
        chosen lag) is below this.
    min_voiced_frames : int
        Windows with fewer voiced (analysed) frames get NaN pitch and formant statistics.
    formant_max_hz : float
        Formants are searched below this; audio is resampled to twice this rate for LPC.
    lpc_order : int
        LPC order (rule of thumb: 2 + kHz of the LPC rate, so 12 for 5.5 kHz).
    formant_frame_ms : float
        LPC analysis frame length.
    max_formant_bw_hz : float
        Poles with a wider bandwidth are not formants.
    max_formant_frames : int
        At most this many voiced frames per window go to LPC (evenly subsampled) to bound cost.
    logmel : bool
        Compute the (64, n_frames) log-mel for deep members.
    mel128 : bool
        Compute the original project's 128-band mean mel power.
    """

    n_fft: int = Field(512, ge=64, le=8192)
    hop_length: int = Field(160, ge=16, le=4096)
    n_mfcc: int = Field(20, ge=1, le=40)
    n_mfcc_mels: int = Field(40, ge=8, le=128)
    delta_width: int = Field(9, ge=3, le=25)
    f0_min_hz: float = Field(60.0, gt=20.0, le=500.0)
    f0_max_hz: float = Field(400.0, gt=40.0, le=2000.0)
    pitch_step: int = Field(2, ge=1, le=10)
    voicing_threshold: float = Field(0.25, gt=0.0, lt=1.0)
    min_voiced_frames: int = Field(10, ge=1)
    formant_max_hz: float = Field(5500.0, ge=3000.0, le=8000.0)
    lpc_order: int = Field(12, ge=6, le=30)
    formant_frame_ms: float = Field(25.0, ge=10.0, le=60.0)
    max_formant_bw_hz: float = Field(600.0, gt=0.0)
    max_formant_frames: int = Field(300, ge=10)
    logmel: bool = True
    mel128: bool = True

    @model_validator(mode="after")
    def _check(self) -> FeatureParams:
        if self.f0_max_hz <= self.f0_min_hz:
            raise ValueError("f0_max_hz must be greater than f0_min_hz")
        if self.delta_width % 2 == 0:
            raise ValueError("delta_width must be odd")
        if self.n_mfcc > self.n_mfcc_mels:
            raise ValueError("n_mfcc must not exceed n_mfcc_mels")
        return self
