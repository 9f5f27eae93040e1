"""Memory and time of a reconstruction, estimated before it starts, so that a request that cannot fit is refused
with advice instead of failing an hour in."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np

from jaxmicro import vgg
from jaxmicro.errors import InputError

# Sustained throughput of the network's convolutions (forward + input gradient), FLOP/s, by platform: rough
# figures from benchmarks/reconstruction_speed.py, used only to tell the user what to expect.
THROUGHPUT = {"cpu": 4.0e10, "gpu": 1.5e14, "tpu": 1.5e14}


class Estimate(NamedTuple):
    memory_bytes: float  # peak, per device
    available_bytes: float  # what one device holds
    seconds: float
    flops_per_step: float  # whole batch
    images_per_step: int  # 2D images through the network per step, whole batch
    devices: int = 1  # the batch is split over this many devices (padded to a multiple of it)


def _activation_bytes(shape2d, taps, bytes_per_value: int) -> float:
    """Activations kept for the backward pass of one 2D image (every conv, ReLU and pool output)."""
    h, w = shape2d
    widths = vgg.widths_by_conv(vgg.VGG19_WIDTHS)
    total, channels = 3.0 * h * w, 3
    for name, kind in vgg.layers_needed(taps):
        if kind == "conv":
            channels = widths[name]
        elif kind == "pool":
            h, w = h // 2, w // 2
        total += h * w * channels
    return total * bytes_per_value


def available_memory() -> float:
    """Bytes the default device can hold: the accelerator's limit, or the machine's physical memory."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def estimate(shape, count: int, steps: int, taps, dtype="float32", slices_per_step: int | None = None,
             levels: int = 1, coarse_steps: int | None = None, devices: int = 1) -> Estimate:
    """Peak memory per device and run time of ``count`` reconstructions of ``shape`` for ``steps`` steps (a
    volume with ``slices_per_step`` sends that many slices per direction through the network each step);
    ``levels`` > 1 adds ``coarse_steps`` at each coarser level (half the size each), whose memory the full size
    exceeds. ``devices``: the batch is split over that many devices (``jaxmicro.sharding``), each holding
    ``ceil(count / devices)`` samples and a copy of the network; time assumes they run in parallel."""
    per_device = -(-count // devices)
    shape = tuple(shape)
    slice_shapes = [shape] if len(shape) == 2 else [(shape[1], shape[2]), (shape[0], shape[2]), (shape[0], shape[1])]
    slice_counts = [1] if len(shape) == 2 else [min(n, slices_per_step or n) for n in shape]
    itemsize = np.dtype(dtype).itemsize
    per_sample = sum(n * _activation_bytes(s, taps, itemsize) for n, s in zip(slice_counts, slice_shapes))
    # x2 for XLA's temporaries around the backward pass; the fields, FFTs and optimiser state are small beside it.
    memory = 2.0 * per_device * per_sample + 4.0 * 20_024_384 + 64 * 2**20
    flops = 3.0 * sum(n * vgg.flops_per_image(s, taps) for n, s in zip(slice_counts, slice_shapes))
    platform = jax.devices()[0].platform
    seconds = steps * per_device * flops / THROUGHPUT.get(platform, THROUGHPUT["cpu"])
    if levels > 1:
        coarse = estimate(tuple(n // 2 for n in shape), count, coarse_steps or steps, taps, dtype, slices_per_step,
                          levels - 1, coarse_steps, devices)
        seconds += coarse.seconds
    return Estimate(memory, available_memory(), seconds, count * flops, count * sum(slice_counts), devices)


def check_fits(e: Estimate) -> None:
    """Refuse a request whose estimated memory per device exceeds 90 % of what a device has."""
    if e.memory_bytes > 0.9 * e.available_bytes:
        each = f" on each of {e.devices} devices" if e.devices > 1 else ""
        raise InputError(
            f"this request needs about {e.memory_bytes / 2**30:.1f} GiB{each} but the device has "
            f"{e.available_bytes / 2**30:.1f} GiB. Lower --count (run several batches), use a smaller --shape, "
            "shallower --layers (e.g. 'shallow'), --dtype bfloat16, or more --devices."
        )


def format_estimate(e: Estimate) -> str:
    minutes, seconds = divmod(int(round(e.seconds)), 60)
    each = f" per device ({e.devices} devices)" if e.devices > 1 else ""
    return (f"estimated peak memory {e.memory_bytes / 2**30:.2f} GiB{each} of {e.available_bytes / 2**30:.0f} GiB, "
            f"about {e.flops_per_step / 1e9:.0f} GFLOP per step, roughly {minutes} min {seconds} s")
