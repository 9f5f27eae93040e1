"""Built-in exemplars that the project generates itself (no third-party data needed for a first run)."""

from __future__ import annotations

import numpy as np


def gaussian_random_field(shape, correlation_length: float, seed: int = 0) -> np.ndarray:
    """Periodic Gaussian random field with a Gaussian spectrum, zero mean and unit variance, float64."""
    rng = np.random.default_rng(seed)
    frequencies = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    k2 = sum(f**2 for f in frequencies)
    spectrum = np.exp(-2.0 * (np.pi * correlation_length) ** 2 * k2)
    field = np.fft.ifftn(np.fft.fftn(rng.normal(size=shape)) * np.sqrt(spectrum)).real
    return (field - field.mean()) / field.std()


def level_cut_microstructure(shape=(128, 128), fractions=(0.6, 0.4), correlation_length: float = 4.0,
                             seed: int = 0) -> np.ndarray:
    """A periodic n-phase label image (uint8) made by cutting a Gaussian random field at quantiles.

    With two phases it looks like a bicontinuous two-phase ceramic or a phase-separated blend: blobs and
    channels of one typical size, set by ``correlation_length`` (pixels). Phase fractions are exact up to ties.
    """
    field = gaussian_random_field(tuple(shape), correlation_length, seed)
    cuts = np.quantile(field, np.cumsum(fractions)[:-1])
    return np.searchsorted(cuts, field).astype(np.uint8)


def default_exemplar() -> np.ndarray:
    """The exemplar of ``jaxmicro reconstruct`` without an image: 128x128, two phases 0.6 / 0.4."""
    return level_cut_microstructure((128, 128), (0.6, 0.4), correlation_length=4.0, seed=2026)
