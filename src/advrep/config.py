"""Configuration helpers shared by the workflow and the tests (pure dict logic, no Snakemake)."""

from __future__ import annotations

import copy
import math

from . import PAPERS


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, recursively for nested dicts (neither is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(config: dict, scale: str | None = None) -> dict:
    """The config with every target's ``by_scale`` overlay for ``scale`` merged in (and removed).

    Each paper section maps target -> settings; a target's ``by_scale: {smoke: {...}, reduced: {...}, paper: {...}}``
    overrides its own keys at that scale.  The result is validated against the same schema again by the workflow,
    so an overlay cannot smuggle in an unknown key or an impossible value.
    """
    scale = scale or config["scale"]
    out = copy.deepcopy(config)
    if "seeds" in out:
        out["seeds"] = seeds(out["seeds"])
    for paper in PAPERS:
        for target, settings in (out.get(paper) or {}).items():
            if isinstance(settings, dict):
                overlay = settings.pop("by_scale", {}) or {}
                out[paper][target] = merge(settings, overlay.get(scale, {}) or {})
    return out


def seeds(values) -> list[int]:
    """The config's ``seeds`` as distinct integers >= 0, in the order given (``--config 'seeds=[0,1]'`` passes
    strings)."""
    out = []
    for v in values:
        try:
            s = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"config seeds: {v!r} is not an integer; write e.g. seeds: [0, 1, 2]") from None
        if s < 0 or isinstance(v, bool) or isinstance(v, float):
            raise ValueError(f"config seeds: {v!r} is not an integer >= 0; write e.g. seeds: [0, 1, 2]")
        if s in out:
            raise ValueError(f"config seeds: {s} is given twice in {list(values)}; each seed must be distinct")
        out.append(s)
    if not out:
        raise ValueError("config seeds: the list is empty; give at least one seed, e.g. seeds: [0]")
    return out


def download_enabled(data_config: dict, scale: str) -> bool:
    """``data.download: auto`` downloads at reduced and paper scale; smoke runs offline."""
    d = data_config.get("download", "auto")
    return scale != "smoke" if d == "auto" else bool(d)


def parse_number(v, key: str = "value"):
    """A YAML scalar as a number: ints/floats as they are, strings like ``"5e-3"`` (PyYAML reads those as strings)
    or ``"8/255"`` parsed; other strings returned unchanged (names).  Every paper package reads eps this way."""
    if isinstance(v, bool) or not isinstance(v, str):
        return v
    s = v.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        pass
    if s.count("/") == 1:
        a, b = s.split("/")
        try:
            out = float(a) / float(b)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{key}: cannot read {v!r} as a number") from None
        if math.isfinite(out):
            return out
    return v


def number(v, key: str = "value") -> float:
    """Like :func:`parse_number` but always a float (``"inf"`` included); a name raises ``ValueError``."""
    if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", "infinity"):
        return math.inf
    out = parse_number(v, key)
    if isinstance(out, str) or out is None:
        raise ValueError(f"{key}: cannot read {v!r} as a number")
    return float(out)
