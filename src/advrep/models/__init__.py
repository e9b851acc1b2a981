"""The model zoo: a timm-like registry of the architectures used by the five papers.

>>> from advrep.models import create_model, list_models
>>> m = create_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width="tiny", seed=0)

Every model takes inputs in [0, 1] and carries its normalisation as its first layer (``model.normalize``;
``model.core`` is the architecture).  Every image model works on 28x28x1 and 32x32x3 inputs; ``width="tiny"`` is the
smoke-scale size.  See :mod:`advrep.models.registry` for the conventions and each module's docstring for the facts
(and their sources) behind each architecture:

* :mod:`~advrep.models.resnet`: ``resnet10`` (sonet), ``resnet18``, ``resnet34``, ``resnet18_encoder`` (+
  :class:`LinearProbe`);
* :mod:`~advrep.models.wrn`: ``wrn34_10``, ``wrn28_10`` (:func:`wide_resnet`), ``madry_cifar_wrn``;
* :mod:`~advrep.models.resnext`: ``resnext34_2x32``, ``resnext34_4x32`` (cfinlay/tulip);
* :mod:`~advrep.models.small`: ``madry_mnist_cnn``, ``mlp``;
* :mod:`~advrep.models.ode`: ``sonet``, ``soblock``, ``odenet`` (sonet paper; solver settings, :func:`nfe`,
  :func:`record_grids`, :func:`solver_override`, :func:`with_solver`, :class:`ODESolverError`).
"""

from .registry import (DATASET_STATS, EncoderModel, LinearProbe, ModelInfo, Normalize, NormalizedModel,
                       PerImageStandardization, create_model, list_models, make_normalization, model_info,
                       register_model, resolve_normalization)
from . import ode, resnet, resnext, small, wrn  # noqa: E402  (registers the models)
from .wrn import wide_resnet

__all__ = ["DATASET_STATS", "EncoderModel", "LinearProbe", "ModelInfo", "Normalize", "NormalizedModel",
           "PerImageStandardization", "create_model", "list_models", "make_normalization", "model_info",
           "register_model", "resolve_normalization", "wide_resnet"]
