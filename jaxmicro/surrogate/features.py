"""Fixed (not trained) descriptors of phase-label images that the heads read: pruned-VGG statistics and, as the
classical baseline, the two-point correlation.

A ``FeatureSpec`` is data: ``kind`` ``"vgg"`` (per tap: each channel's spatial mean, i.e. the pooled activation,
and its standard deviation, the square root of the centred Gram matrix's diagonal; Li et al. 2018's reduced Gram
statistics), ``"twopoint"`` (the phase-1 two-point correlation in a window of ``radius`` pixels, reduced later
by PCA in the head) or ``"pixels"`` (the phase-1 indicator itself, for the end-to-end CNN baseline). 3D volumes
are described by their slices along each axis, averaged per axis, so the description keeps the direction. A
model records its spec and the VGG weights' digest and refuses any other.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmicro import vgg
from jaxmicro.encoding import encode_labels
from jaxmicro.errors import InputError

FEATURE_KINDS = ("vgg", "twopoint", "pixels")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """What the features are: kind, VGG taps, pooling and padding, two-point radius, phases."""

    kind: str = "vgg"
    taps: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_1")
    pooling: str = "average"
    padding: str = "periodic"
    radius: int = 16
    n_phases: int = 2

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise InputError(f"unknown feature kind {self.kind!r}; choose from {', '.join(FEATURE_KINDS)}")
        object.__setattr__(self, "taps", vgg.resolve_taps(self.taps))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"taps": list(self.taps)}

    @classmethod
    def from_json(cls, data: dict) -> "FeatureSpec":
        return cls(**{k: tuple(v) if k == "taps" else v for k, v in data.items()})


def weights_digest(params: dict | None, spec: FeatureSpec) -> str | None:
    """Content digest of the convolutions ``spec`` uses (``jaxmicro.weights.content_digest``); None without VGG."""
    if spec.kind != "vgg":
        return None
    from jaxmicro.weights import content_digest

    needed = vgg.convs_needed(spec.taps)
    missing = [name for name in needed if name not in params]
    if missing:
        raise InputError(f"the VGG weights lack the layers {missing} that the taps {list(spec.taps)} need")
    return content_digest({f"{name}/{key}": np.asarray(params[name][key]) for name in needed
                           for key in ("kernel", "bias")})


def vgg_moments(spec: FeatureSpec, params: dict) -> Callable:
    """``moments(rgb)``: the per-channel mean and standard deviation of ``spec``'s taps for one encoded 3-channel
    image ``(H, W, 3)`` (labels or, in design, phase probabilities encoded by ``jaxmicro.encoding``)."""
    widths = tuple(int(params[name]["kernel"].shape[-1]) for name in ("conv1_1", "conv2_1", "conv3_1",
                                                                       "conv4_1", "conv5_1") if name in params)
    widths = widths + vgg.VGG19_WIDTHS[len(widths):]
    network = vgg.VGG19Features(spec.taps, pooling=spec.pooling, padding=spec.padding, widths=widths)
    variables = {"params": {name: params[name] for name in vgg.convs_needed(spec.taps)}}

    def moments(rgb):  # (H, W, 3) -> (F,)
        taps = network.apply(variables, vgg.preprocess(rgb)[None])
        stats = []
        for name in spec.taps:
            flat = taps[name][0].reshape(-1, taps[name].shape[-1])
            stats += [flat.mean(0), jnp.sqrt(flat.var(0) + 1e-12)]
        return jnp.concatenate(stats)

    return moments


def _vgg_labels(spec: FeatureSpec, params: dict) -> Callable:
    moments = vgg_moments(spec, params)
    return lambda labels: moments(encode_labels(labels, spec.n_phases))  # (H, W) -> (F,)


def _two_point(spec: FeatureSpec) -> Callable:
    def one(labels):  # (H, W) -> ((2r+1)^2,), displacements -r..r per axis; a volume: per axis, see below
        indicator = (labels == 1).astype(jnp.float32)
        power = jnp.abs(jnp.fft.rfftn(indicator)) ** 2
        s2 = jnp.fft.irfftn(power, s=indicator.shape) / indicator.size
        near = [jnp.arange(-spec.radius, spec.radius + 1) % side for side in indicator.shape]
        if labels.ndim == 2:
            return s2[near[0]][:, near[1]].reshape(-1)
        # the slice-averaged periodic S2 of the slices across axis a is the volume's at displacements with d_a = 0
        return jnp.concatenate([s2[0][near[1]][:, near[2]].reshape(-1), s2[near[0], 0][:, near[2]].reshape(-1),
                                s2[near[0]][:, near[1], 0].reshape(-1)])

    return one


@functools.lru_cache(maxsize=8)
def _window_from_power(shape: tuple[int, int], radius: int) -> np.ndarray:
    """The linear map from a 2D image's half power spectrum ``|rfft2|^2`` (flattened) to its two-point window
    (``_two_point``): ``S2(d) = sum_k m_k P_k cos(2 pi (k_x d_x / H + k_y d_y / W)) / (H W)^2``, each frequency of
    the half plane counted with its mirror image (``m_k = 2``) but for the self-mirrored columns ``k_y = 0`` and
    ``W / 2``. ``(H (W // 2 + 1), (2r + 1)^2)`` float64."""
    h, w = shape
    kx, ky = np.meshgrid(np.arange(h), np.arange(w // 2 + 1), indexing="ij")
    mirror = np.where((ky == 0) | (2 * ky == w), 1.0, 2.0).reshape(-1, 1)
    dx, dy = np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1), indexing="ij")
    phase = 2 * np.pi * (np.outer(kx.ravel(), dx.ravel()) / h + np.outer(ky.ravel(), dy.ravel()) / w)
    return mirror * np.cos(phase) / float(h * w) ** 2


def folded_two_point(spec: FeatureSpec, normaliser: dict, shape: Sequence[int]) -> Callable:
    """``reduce(labels (B, H, W)) -> (B, C)``: the PCA-reduced two-point features (``heads.reduce_features``)
    straight from each image's half power spectrum, the inverse transform, the window and the projection folded
    into one matrix (the same numbers as the window, without the inverse FFT: the prediction's largest cost)."""
    to_window = _window_from_power(tuple(int(s) for s in shape), spec.radius)
    projection = np.asarray(normaliser["projection"], np.float64) / np.asarray(normaliser["scale"], np.float64)[:, None]
    matrix = jnp.asarray(to_window @ projection, jnp.float32)
    offset = jnp.asarray(-np.asarray(normaliser["mean"], np.float64) @ projection, jnp.float32)

    def reduce(labels):
        spectrum = jnp.fft.rfft2((labels == 1).astype(jnp.float32))
        power = (spectrum.real**2 + spectrum.imag**2).reshape(labels.shape[0], -1)
        return power @ matrix + offset

    return reduce


def _pixels(spec: FeatureSpec) -> Callable:
    def one(labels):  # (H, W) -> (H W,)
        return (labels == 1).astype(jnp.float32).reshape(-1)

    return one


def make_describer(spec: FeatureSpec, params: dict | None = None) -> Callable:
    """``describe(labels) -> (F,)`` for one 2D image or 3D volume (slices per axis), traceable."""
    if spec.kind == "vgg" and params is None:
        raise InputError("VGG features need network weights (params)")
    one = {"vgg": lambda: _vgg_labels(spec, params), "twopoint": lambda: _two_point(spec),
           "pixels": lambda: _pixels(spec)}[spec.kind]()

    def describe(image):
        if image.ndim == 3 and spec.kind == "pixels":
            raise InputError("the end-to-end CNN head reads 2D images only")
        if image.ndim == 2 or spec.kind == "twopoint":
            return one(image)
        per_axis = []
        for axis in range(3):
            sections = jnp.moveaxis(image, axis, 0)
            per_axis.append(jax.lax.map(one, sections).mean(0))
        return jnp.concatenate(per_axis)

    return describe


def run_in_chunks(batched: Callable, n_phases: int, chunk: Callable[[tuple[int, ...]], int]) -> Callable:
    """``run(labels (B, *shape), progress=None)``: ``batched`` (a traceable function of an int32 label batch) jitted
    and applied to chunks of ``chunk(shape)`` images (fewer when B is smaller; one compiled shape per chunk length,
    bounded memory), results concatenated along their first axis as float32 numpy, after checking the batch's rank
    and phases."""
    compiled = jax.jit(lambda part: batched(part.astype(jnp.int32)))

    def run(labels: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.ndim not in (3, 4) or not len(labels):
            raise InputError(f"images must be a batch of 2D or 3D label arrays, got shape {labels.shape}")
        if labels.size and int(labels.max()) >= n_phases:
            raise InputError(f"the images have {int(labels.max()) + 1} phases; the features are for {n_phases}")
        if labels.size and int(labels.min()) < 0:
            raise InputError("the images hold negative labels; phases are numbered 0, 1, ...")
        labels = labels.astype(np.uint8)
        size = max(1, min(chunk(labels.shape[1:]), len(labels)))
        out = []
        for start in range(0, len(labels), size):
            part = labels[start:start + size]
            pad = size - len(part)
            if pad:  # one compiled shape
                part = np.concatenate([part, np.repeat(part[:1], pad, axis=0)])
            out.append(np.asarray(compiled(jnp.asarray(part)))[: size - pad])
            if progress:
                progress(size - pad)
        return np.concatenate(out).astype(np.float32)

    return run


def chunk_size(spec: FeatureSpec, shape: Sequence[int]) -> int:
    """Images of ``shape`` per compiled call: as many pixels as 32 images of 64x64 through the network (its
    activations bound the memory), else as 128 of them; at least one."""
    return max(1, (32 if spec.kind == "vgg" else 128) * 64 * 64 // int(np.prod(shape)))


def make_featurizer(spec: FeatureSpec, params: dict | None = None, batch: int | None = None) -> Callable:
    """``labels (B, *shape) -> features (B, F)`` float32 numpy; 2D images or 3D volumes (slices per axis), in
    jitted chunks of ``batch`` images (default ``chunk_size``; memory stays bounded whatever B)."""
    chunk = (lambda shape: batch) if batch else functools.partial(chunk_size, spec)
    return run_in_chunks(jax.vmap(make_describer(spec, params)), spec.n_phases, chunk)


def check_size(spec: FeatureSpec, shape: Sequence[int]) -> None:
    if spec.kind == "vgg" and min(shape) < vgg.minimum_side(spec.taps):
        raise InputError(f"images of shape {tuple(shape)} are too small for the taps {list(spec.taps)} "
                         f"(sides of at least {vgg.minimum_side(spec.taps)} pixels)")
    if spec.kind == "twopoint" and min(shape) < 2 * spec.radius + 1:
        raise InputError(f"images of shape {tuple(shape)} are too small for a two-point radius of {spec.radius}")
