"""Learned property heads (surrogates): labelled data from the FFT solver, heads on pruned-VGG features and
baselines, training, evaluation, and conductivity tensors or stiffnesses inside the bounds by construction. See
docs/surrogate.md.

Modules: ``data`` (generators, labels, shards, augmentation), ``features`` (feature specs and extraction),
``properties`` (what a head predicts: bounds, units, rotation, labelling solver), ``heads`` (bounded ensemble
heads), ``train`` (``train.train``), ``model`` (save, load, refuse another network), ``evaluate``, ``cli`` (the
``jaxmicro surrogate`` command).
"""

from jaxmicro.surrogate.data import augment, load_data, make_data
from jaxmicro.surrogate.features import FeatureSpec, make_featurizer
from jaxmicro.surrogate.heads import HeadConfig, make_head
from jaxmicro.surrogate.model import Model, load_model, make_predictor, save_model
from jaxmicro.surrogate.properties import PropertySpec
from jaxmicro.surrogate.train import TrainOptions

__all__ = ["FeatureSpec", "HeadConfig", "Model", "PropertySpec", "TrainOptions", "augment", "load_data",
           "load_model", "make_data", "make_featurizer", "make_head", "make_predictor", "save_model"]
