"""Pinned content hashes: sha256 of DECODED data, for copies whose file bytes differ from torchvision's.

``CONTENT_SHA256[name][split]`` is :func:`advrep.data.prepared.arrays_sha256` over ``(x, y)`` of that split in the
prepared representation (images uint8 NHWC ``(N, H, W, C)``, labels int64), i.e. what :func:`advrep.data.prepare`
writes.  A file whose bytes match torchvision's md5 needs no entry here; an entry lets a faithful re-encoded copy
(different gzip level or header, uncompressed idx) be accepted.

Only hashes computed here from data actually available are pinned:

* fashion_mnist: computed from Debian's package ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1 (bookworm/main,
  installs ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).  Debian re-gzipped
  the upstream files (gzip header without file name, mtime 2020-06-05), so their md5s differ from torchvision's
  ``FashionMNIST.resources``; Debian packages upstream's files, so the decoded content is taken to be upstream's
  (not independently checkable here: upstream publishes md5s of the .gz files only).  Debian .gz md5s, for the record:
  train-images cf8536b0aa1a6ac5fa3f23001093305c, train-labels 10bea18fdb374794d4bb42e356e600c9,
  t10k-images f78720b4224f21cce2f2ccf2d7a94c9a, t10k-labels 0d30e22e447f3c33dab9ed536400ac01.
  Their decompressed idx files (``gzip -dc``) have md5 train-images f4a8712d7a061bf5bd6d2ca38dc4d50a, train-labels
  9018921c3c673c538a1fc5bad174d6f9, t10k-images 8181f5470baa50b63fa0f6fddb340f0a, t10k-labels
  15d484375f8d13e6eb1aabb0c3f46965 (47040016, 60008, 7840016, 10008 bytes).  The hashes below were computed by
  :func:`print_idx_hashes` (this module's own idx reader) and cross-checked with torchvision's
  ``torchvision.datasets.mnist.read_image_file``/``read_label_file`` on the ``gzip -dc`` output (same values).
* mnist, cifar10, cifar100: nothing pinned (no copy reachable here); their files must match torchvision's md5.
"""

from __future__ import annotations

CONTENT_SHA256: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train": "a77f6c9770c1add0adcc183900402172c57535d30c0285fe671033432aeb8fd8",
        "test": "ffbb947d8b4b7bb0fe54eb40d352741a4d8e0afea9eb87438554ff14d66eaad0",
    },
}

# sha256 of the whole prepared Fashion-MNIST (content_sha256 over x_train, y_train, x_test, y_test), same source.
PREPARED_SHA256: dict[str, str] = {
    "fashion_mnist": "fa466530ec2b64b8cda57f6fd4d309765dd222208f4a8ff96fb89b8195d935c0",
}


def print_idx_hashes(folder) -> dict:
    """Print (and return) the content hashes of an idx-format copy in ``folder`` (how the pins above were computed):
    ``python -c "from advrep.data.checksums import print_idx_hashes as p; p('/usr/share/datasets/fashion-mnist')"``.
    """
    from pathlib import Path

    import numpy as np

    from .prepared import arrays_sha256, content_sha256
    from .real import decode_idx

    folder = Path(folder)
    out, hashes = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        def read(kind, ndim):
            p = next(q for q in (folder / f"{prefix}-{kind}.gz", folder / f"{prefix}-{kind}") if q.is_file())
            return decode_idx(p.read_bytes(), p, ndim)
        x = read("images-idx3-ubyte", 3)[..., None]
        y = read("labels-idx1-ubyte", 1).astype(np.int64)
        out[split] = (x, y)
        hashes[split] = arrays_sha256(x, y)
        print(f"{split}: {hashes[split]}  images {list(x.shape)} label counts {np.bincount(y).tolist()}")
    hashes["all"] = content_sha256(*out["train"], *out["test"])
    print(f"all: {hashes['all']}")
    return hashes
