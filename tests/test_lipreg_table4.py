"""lipreg Table 4: the exact minimum cross-class distance against brute force, duplicates, the result table."""

import numpy as np
import pytest

from advrep.lipreg.dataset_lipschitz import (float32_error_bound, min_cross_class_distance,
                                             min_cross_class_distance_bruteforce, min_cross_class_distance_torch,
                                             unique_image_mask)


@pytest.mark.parametrize("seed", range(6))
def test_faiss_search_is_exact_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, classes = 600, 5
    x = rng.integers(0, 256, size=(n, 12, 12, 3), dtype=np.uint8)
    y = rng.integers(0, classes, size=n)
    # near-ties: copies of one image, perturbed by 1..3 grey levels in one pixel, given other labels, so several
    # pairs lie within float32 rounding of each other and only the exact re-check can rank them
    for k, i in enumerate(rng.choice(n, size=8, replace=False)):
        j = (i + 1 + k) % n
        x[j] = x[i]
        x[j, k % 12, 0, 0] = np.uint8((int(x[i, k % 12, 0, 0]) + 1 + k % 3) % 256)
        y[j] = (y[i] + 1) % classes
    res = min_cross_class_distance(x, y)
    assert res.distance == min_cross_class_distance_bruteforce(x, y)  # exactly equal, not approximately
    i, j = res.pair
    assert y[i] != y[j]
    assert np.sqrt(((x[i].astype(float) - x[j]) ** 2).sum()) / 255 == pytest.approx(res.distance, abs=1e-15)


def test_real_digits_match_brute_force():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255 / 16)).round().astype(np.uint8)
    res = min_cross_class_distance(x, d.target)
    assert res.distance == min_cross_class_distance_bruteforce(x, d.target)
    assert res.lipschitz == pytest.approx(1 / res.distance)


def test_torch_peer_agrees_to_float32_accuracy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(300, 64), dtype=np.uint8)
    y = rng.integers(0, 3, size=300)
    assert min_cross_class_distance_torch(x, y) == pytest.approx(min_cross_class_distance_bruteforce(x, y), rel=1e-4)


def test_error_bound_grows_with_dimension_and_norm():
    assert float32_error_bound(3072, 1000.0) > float32_error_bound(784, 1000.0) > float32_error_bound(784, 10.0)


def test_unique_image_mask_drops_every_copy():
    x = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2)
    x[3] = x[1]
    assert unique_image_mask(x).tolist() == [True, False, True, False, True]


def test_duplicates_across_classes_would_give_zero_distance():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 8, 8), dtype=np.uint8)
    y = np.arange(50) % 2
    x[10] = x[11]  # same image, different labels
    assert min_cross_class_distance(x, y).distance == 0.0
    keep = unique_image_mask(x)
    assert min_cross_class_distance(x[keep], y[keep]).distance > 0.0
