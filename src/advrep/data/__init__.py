"""Data layer: obtain, verify, decode and store the datasets the workflow uses.

Registry (:data:`DATASETS`): ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` (real, via torchvision's
downloaders or an offline mirror; see :mod:`advrep.data.real` for the mirror layouts and checks), ``digits28``,
``digits32`` (scikit-learn's bundled digits as small stand-ins), ``fashion28``, ``fashion32`` (seeded subsets of
real Fashion-MNIST as stand-ins where a copy is at hand; see :mod:`advrep.data.standins`) and ``planes`` (the voronoi
paper's synthetic PLANES; see :mod:`advrep.data.synthetic`).

* :func:`availability` -- cheap (file existence only): can :func:`prepare` get this dataset?
* :func:`prepare` -- obtain, verify, decode and write one prepared ``.npz`` atomically; returns its meta dict.
* :func:`load` -- read a prepared ``.npz`` into a :class:`Prepared` (re-checking its content hash).
* :func:`resolve_standins` -- the config with ``standin28`` / ``standin32`` turned into the Fashion-MNIST stand-ins
  where available, the digits otherwise.
* :func:`content_sha256` -- sha256 over the decoded arrays (dtype, shape, bytes; fixed order).
"""

from .errors import DatasetCorrupt, DatasetUnavailable
from .prepared import Prepared, arrays_sha256, content_sha256, load
from .registry import DATASETS, DatasetSpec, availability, config_params, file_name_pattern, parse_name, prepare
from .standins import SYMBOLIC as SYMBOLIC_STANDINS, resolve_standin, resolve_standins

__all__ = ["DATASETS", "DatasetSpec", "DatasetCorrupt", "DatasetUnavailable", "Prepared", "arrays_sha256",
           "SYMBOLIC_STANDINS", "availability", "config_params", "content_sha256", "file_name_pattern", "load",
           "parse_name", "prepare",
           "resolve_standin", "resolve_standins"]
