"""What the scanner adds to a simulated image: gain, bias field and Rician noise.

Per case and modality: a gain in [0.5, 2] x 2000 (so stored values look like raw scanner
units, from a few hundred to a few thousand); a smooth multiplicative bias field
exp(0.12 g) with g a unit-variance random field of 70 mm lattice spacing (about +-25 %
across a brain); Rician noise: the magnitude of the signal plus complex Gaussian noise,
sigma = mean brain signal / SNR with SNR uniform in [12, 40]. Noise is added inside the
brain only (the images are skull-stripped, background exactly 0).
"""

import numpy as np

from fuse4seg_jax.sim.geometry import smooth_field

GAIN = (0.5, 2.0)
UNIT = 2000.0
BIAS_SD = 0.12
BIAS_SPACING_MM = 70.0
SNR = (12.0, 40.0)


def draw(rng, num_modalities: int) -> dict:
    return {
        "gain": UNIT * rng.uniform(*GAIN, num_modalities),
        "snr": rng.uniform(*SNR, num_modalities),
    }


def bias_fields(rng, axes_mm, num_modalities: int) -> np.ndarray:
    """(nx, ny, nz, M) multiplicative bias fields on the grid axes."""
    return np.exp(BIAS_SD * smooth_field(rng, axes_mm, BIAS_SPACING_MM, num_modalities))


def acquire(rng, signal, bias, scanner) -> np.ndarray:
    """Images (N, M) of brain voxels: gain x bias x signal with Rician noise."""
    clean = signal * bias * scanner["gain"].astype(np.float32)
    sigma = (clean.mean(0) / scanner["snr"]).astype(np.float32)
    real = clean + sigma * rng.standard_normal(clean.shape, np.float32)
    imag = sigma * rng.standard_normal(clean.shape, np.float32)
    return np.sqrt(real * real + imag * imag)
