"""Configuration helpers shared by the workflow and the tests (pure dict logic, no Snakemake)."""

from __future__ import annotations

import copy

from . import PAPERS


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(config: dict, scale: str | None = None) -> dict:
    """The config with every target's ``by_scale`` overlay for ``scale`` merged in (and removed).

    Each paper section maps target -> settings; a target's ``by_scale: {smoke: {...}, reduced: {...}, paper: {...}}``
    overrides its own keys at that scale.  The result is validated against the same schema again by the workflow,
    so an overlay cannot smuggle in an unknown key or an impossible value.
    """
    scale = scale or config["scale"]
    out = copy.deepcopy(config)
    for paper in PAPERS:
        for target, settings in (out.get(paper) or {}).items():
            if isinstance(settings, dict):
                overlay = settings.pop("by_scale", {}) or {}
                out[paper][target] = _merge(settings, overlay.get(scale, {}) or {})
    return out


def download_enabled(data_config: dict, scale: str) -> bool:
    """``data.download: auto`` downloads at reduced and paper scale; smoke runs offline."""
    d = data_config.get("download", "auto")
    return scale != "smoke" if d == "auto" else bool(d)
