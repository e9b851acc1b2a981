"""Errors raised by :mod:`advrep.data`.

Both derive from ``RuntimeError`` so a Snakemake job fails with the message printed; the messages are written for the
person running the workflow: what is missing or wrong, and what to do about it.
"""

from __future__ import annotations


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be obtained here: no cached copy, no usable mirror, and downloading is off or failed."""


class DatasetCorrupt(RuntimeError):
    """A file was found but failed a check (md5, decoding, pinned content hash, or structure); for a prepared
    ``.npz``, the message says where the damaged file was moved and which rule rebuilds it."""
