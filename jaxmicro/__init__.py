"""jaxmicro: reconstruct and design material microstructures with one differentiable JAX graph.

Common entry points (see docs/ for the guide):

    jaxmicro.reconstruct(exemplar, shape=(128, 128), count=8, steps=500, seed=0)   # new microstructures
    jaxmicro.design(exemplar, shape=(64, 64), conductivity=(1, 10), targets={"k_xx": 4.2})  # inverse design
    jaxmicro.compare(exemplar, reconstructions)                                    # statistics report
    jaxmicro.effective_conductivity(labels, [1.0, 10.0])                           # FFT homogenisation
    jaxmicro.read_microstructure("sample.tif")                                     # files -> phases
    jaxmicro.save_targets("t.npz", jaxmicro.characterise(exemplar))    # stored statistics: reconstruct(targets=...)
    jaxmicro.enable_compilation_cache()                          # later runs of the same shapes skip compiling
    with jaxmicro.use_devices(4): ...                            # split the batch over 4 devices (or all: None)
"""

from jaxmicro.compilation import enable_compilation_cache
from jaxmicro.descriptors import Descriptors, make_describe
from jaxmicro.errors import ConvergenceError, DownloadError, InputError, JaxmicroError, WeightsError
from jaxmicro.inverse_design import design
from jaxmicro.io import Microstructure, read_microstructure, write_labels_tiff
from jaxmicro.optimise import OptimisationState, make_optimizer
from jaxmicro.physics import HomogenisationResult, effective_conductivity, effective_stiffness, tortuosity
from jaxmicro.reconstruction import (
    Characterisation,
    ReconstructionConfig,
    ReconstructionResult,
    ReconstructionState,
    ReconstructionTargets,
    characterise,
    make_config,
    make_loss,
    make_objective,
    make_run_chunk,
    make_step,
    make_targets,
    reconstruct,
)
from jaxmicro.report import compare, describe
from jaxmicro.sharding import use_devices
from jaxmicro.statistics import (
    chord_length_distribution,
    copy_agreement,
    copy_baseline,
    largest_cluster_fraction,
    largest_cluster_fraction_slices,
    largest_cluster_fraction_tiles,
    lineal_path,
    specific_surface,
    two_point_correlation,
    two_point_profiles,
    volume_fractions,
)
from jaxmicro.status import Status
from jaxmicro.targets import load_targets, save_targets
from jaxmicro.terms import Objective
from jaxmicro.units import VoxelSize
from jaxmicro.vgg import TAP_SETS, VGG19Features, gram_matrix
from jaxmicro.weights import fetch_weights, load_vgg19_params, verify_weights

__version__ = "0.1.0"  # the one place the version is written: pyproject.toml reads it from here

__all__ = [
    "Characterisation",
    "VoxelSize",
    "characterise",
    "load_targets",
    "save_targets",
    "make_objective",
    "make_describe",
    "design",
    "Status",
    "OptimisationState",
    "Objective",
    "Descriptors",
    "HomogenisationResult",
    "ConvergenceError",
    "DownloadError",
    "InputError",
    "JaxmicroError",
    "Microstructure",
    "ReconstructionConfig",
    "ReconstructionResult",
    "ReconstructionState",
    "ReconstructionTargets",
    "TAP_SETS",
    "VGG19Features",
    "WeightsError",
    "chord_length_distribution",
    "compare",
    "copy_agreement",
    "copy_baseline",
    "describe",
    "effective_conductivity",
    "tortuosity",
    "effective_stiffness",
    "enable_compilation_cache",
    "fetch_weights",
    "gram_matrix",
    "largest_cluster_fraction",
    "largest_cluster_fraction_slices",
    "largest_cluster_fraction_tiles",
    "lineal_path",
    "load_vgg19_params",
    "make_config",
    "make_loss",
    "make_optimizer",
    "make_run_chunk",
    "make_step",
    "make_targets",
    "read_microstructure",
    "reconstruct",
    "specific_surface",
    "two_point_correlation",
    "two_point_profiles",
    "use_devices",
    "verify_weights",
    "volume_fractions",
    "write_labels_tiff",
]
