"""The dataset registry and the two entry points used by the workflow: :func:`availability` and :func:`prepare`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import real, standins, synthetic
from .errors import DatasetUnavailable
from .prepared import arrays_sha256, write_prepared


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    kind: str                      # 'real' | 'bundled' | 'generated' | 'derived' (a stand-in built from `base`)
    description: str
    shape: tuple | None            # (H, W, C) for images; None where it depends on params (planes: (codim + 2,))
    n_classes: int
    standin_for: str | None = None
    torchvision: str | None = None  # torchvision.datasets class for real data
    defaults: dict = field(default_factory=dict)   # accepted params and their defaults
    required: tuple = ()                           # params without default
    base: str | None = None                        # the real dataset a 'derived' one is built from


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "real", "MNIST handwritten digits", (28, 28, 1), 10, torchvision="MNIST"),
    "fashion_mnist": DatasetSpec("fashion_mnist", "real", "Fashion-MNIST (Zalando)", (28, 28, 1), 10,
                                 torchvision="FashionMNIST"),
    "cifar10": DatasetSpec("cifar10", "real", "CIFAR-10", (32, 32, 3), 10, torchvision="CIFAR10"),
    "cifar100": DatasetSpec("cifar100", "real", "CIFAR-100 (fine labels)", (32, 32, 3), 100, torchvision="CIFAR100"),
    "digits28": DatasetSpec("digits28", "bundled", "scikit-learn digits resized to 28x28x1", (28, 28, 1), 10,
                            standin_for="mnist-like 28x28x1", defaults=dict(synthetic.DIGITS_DEFAULTS)),
    "digits32": DatasetSpec("digits32", "bundled", "scikit-learn digits resized to 32x32x3 (grey replicated)",
                            (32, 32, 3), 10, standin_for="cifar-like 32x32x3",
                            defaults=dict(synthetic.DIGITS_DEFAULTS)),
    "fashion28": DatasetSpec("fashion28", "derived", "seeded class-balanced subset of Fashion-MNIST, 28x28x1",
                             (28, 28, 1), 10, standin_for="mnist-like 28x28x1", base="fashion_mnist",
                             defaults=dict(standins.STANDIN_DEFAULTS)),
    "fashion32": DatasetSpec("fashion32", "derived", "seeded class-balanced subset of Fashion-MNIST, zero-padded to "
                             "32x32, grey repeated to 3 channels", (32, 32, 3), 10, standin_for="cifar-like 32x32x3",
                             base="fashion_mnist", defaults=dict(standins.STANDIN_DEFAULTS)),
    "planes": DatasetSpec("planes", "generated",
                          "PLANES (Khoury & Hadfield-Menell 2018), two 2-D planes in R^(codim+2)", None, 2,
                          defaults=dict(synthetic.PLANES_DEFAULTS), required=("codim",)),
}


_PARAM_NAMES = {"planes": re.compile(r"planes_codim(?P<codim>[1-9][0-9]*)")}


def parse_name(name: str) -> tuple[str, dict]:
    """A prepared file's name -> (registry name, parameters): ``planes_codim10`` -> ``("planes", {"codim": 10})``;
    names of datasets without parameters map to themselves."""
    for base, pattern in _PARAM_NAMES.items():
        m = pattern.fullmatch(name)
        if m:
            return base, {k: int(v) for k, v in m.groupdict().items()}
    _spec(name)
    return name, {}


def file_name_pattern() -> str:
    """Regular expression matching every prepared-file name (for the workflow's wildcard constraint)."""
    plain = [n for n in DATASETS if n not in _PARAM_NAMES]
    return "|".join(plain + [re.sub(r"\(\?P<\w+>", "(?:", p.pattern) for p in _PARAM_NAMES.values()])


def _spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def _params(spec: DatasetSpec, params: dict) -> dict:
    unknown = sorted(set(params) - set(spec.defaults) - set(spec.required))
    if unknown:
        raise TypeError(f"dataset {spec.name!r} takes no parameter(s) {unknown}; "
                        f"accepted: {sorted([*spec.required, *spec.defaults]) or 'none'}")
    missing = [p for p in spec.required if p not in params]
    if missing:
        raise TypeError(f"dataset {spec.name!r} needs parameter(s) {missing}")
    return {**spec.defaults, **params}


def config_params(name: str, data_cfg: dict) -> dict:
    """The parameters the config sets for prepared file ``name``: the ``data.standins`` block (subset sizes, seed)
    for the stand-ins built from real data, nothing for the others."""
    base, _ = parse_name(name)
    if _spec(base).kind != "derived":
        return {}
    return {k: data_cfg.get("standins", {}).get(k, v) for k, v in standins.STANDIN_DEFAULTS.items()}


def availability(name: str, *, root, mirror=None, download=False) -> tuple[bool, str]:
    """Can :func:`prepare` obtain ``name``?  File-existence checks only (nothing is read or decoded).

    Returns ``(True, where from)`` or ``(False, why not and how to provide it)``.
    """
    spec = _spec(name)
    if spec.kind == "derived":
        return real.availability(real.REAL[spec.base], root=root, mirror=mirror, download=download)
    if spec.kind == "bundled":
        return True, "bundled with scikit-learn"
    if spec.kind == "generated":
        return True, "generated (no files needed)"
    return real.availability(real.REAL[name], root=root, mirror=mirror, download=download)


def prepare(name: str, out_path, *, root, mirror=None, download=False, **params) -> dict:
    """Obtain, verify and decode dataset ``name`` and write one prepared ``.npz`` to ``out_path`` atomically.

    Returns the metadata dict stored in the file.  Raises :class:`DatasetUnavailable` (nothing to read and no
    download) or :class:`DatasetCorrupt` (a file failed a check); in both cases nothing is written at ``out_path``.
    """
    spec = _spec(name)
    params = _params(spec, params)
    meta = {"name": name, "params": params, "standin_for": spec.standin_for, "n_classes": spec.n_classes,
            "description": spec.description}
    if spec.kind == "bundled":
        size, channels = spec.shape[0], spec.shape[2]
        x_tr, y_tr, x_te, y_te, info = synthetic.make_digits(size, channels, **params)
        meta.update(source="bundled", verified_by="bundled (scikit-learn)", shape=list(spec.shape), **info)
    elif spec.kind == "generated":
        x_tr, y_tr, x_te, y_te = synthetic.make_planes(**params)
        meta.update(source="generated", verified_by="generated", origin="advrep.data.synthetic.make_planes",
                    shape=[int(params["codim"]) + 2],
                    definition="voronoi paper (003_ecf3e37839b8b53b.txt) line 82; grid anchored at -extent",
                    grid_points_per_axis={"train": len(synthetic.planes_axes(params["extent"], params["side"])[0]),
                                          "test": len(synthetic.planes_axes(params["extent"], params["side"])[1])})
    elif spec.kind == "derived":
        (x_tr, y_tr), (x_te, y_te), base_meta = _obtain_real(spec.base, root, mirror, download)
        x_tr, y_tr, x_te, y_te, info = standins.make_standin(spec.shape, x_tr, y_tr, x_te, y_te, spec.n_classes,
                                                             **params)
        meta.update({k: base_meta[k] for k in ("source", "origin", "verified_by", "split_verified_by", "files",
                                               "classes")})
        meta.update(shape=list(spec.shape), definition="advrep.data.standins (module docstring)",
                    derived_from={"name": spec.base, "split_sha256": base_meta["split_sha256"]}, **info)
    else:
        (x_tr, y_tr), (x_te, y_te), real_meta = _obtain_real(name, root, mirror, download)
        meta.update(real_meta)
    meta["split_sha256"] = {"train": arrays_sha256(x_tr, y_tr), "test": arrays_sha256(x_te, y_te)}
    return write_prepared(out_path, x_tr, y_tr, x_te, y_te, meta)


def _obtain_real(name, root, mirror, download):
    """Find (cache, then mirror, then download), verify and decode real dataset ``name``:
    ``((x_train, y_train), (x_test, y_test), meta)``."""
    rspec = real.REAL[name]
    found, source = None, None
    if root is not None:
        found, _ = real.locate(root, rspec)
        source = "cache"
    if found is None and mirror is not None:
        found, _ = real.locate(mirror, rspec)
        source = "mirror"
    if found is None:
        if not download:
            raise DatasetUnavailable(real.unavailable_message(rspec, root, mirror, download))
        if root is None:
            raise DatasetUnavailable(f"dataset {name!r}: `data.download` needs `data.root` to download into")
        real.download(rspec, root, mirror)
        found, why = real.locate(root, rspec)
        source = "download"
        if found is None:
            raise DatasetUnavailable(real.unavailable_message(
                rspec, root, mirror, download,
                extra=f"torchvision reported success but the files are not where expected ({why})."))
    arrays, records, split_verified, classes = real.read(rspec, found, source)
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
    kinds = list(dict.fromkeys(split_verified[s] for s in ("train", "test")))
    meta = dict(source=source, origin=str(found.folder if found.mode == "files" else found.paths["archive"]),
                verified_by=" + ".join(kinds), split_verified_by=split_verified, files=records,
                shape=list(rspec.shape), torchvision_class=f"torchvision.datasets.{rspec.tv_class}",
                classes=classes, split_sha256={"train": arrays_sha256(x_tr, y_tr), "test": arrays_sha256(x_te, y_te)})
    if source == "download":
        meta["downloaded_from_one_of"] = real.download_urls(rspec)
    return (x_tr, y_tr), (x_te, y_te), meta
