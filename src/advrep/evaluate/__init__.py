"""Evaluation: robust-accuracy curves (per-sample worst case over attacks at every eps), NAUC, summaries;
per-sample evaluation tables and their aggregations; the gradient-masking check."""

from .curves import nauc, robust_accuracy_at
from .masking import MaskingCheck, gradient_masking_checks, masking_rows
from .per_sample import (accuracy_curve, attack_labels, clean_accuracy, distance_nauc, evaluate_per_sample,
                         input_gradient_norms, max_gradient_norm, mean_gradient_norm, median_adversarial_distance,
                         median_time_to_success, read_per_sample, robust_accuracy, summary_rows, write_per_sample)

__all__ = ["nauc", "robust_accuracy_at",
           "MaskingCheck", "gradient_masking_checks", "masking_rows",
           "accuracy_curve", "attack_labels", "clean_accuracy", "distance_nauc", "evaluate_per_sample",
           "input_gradient_norms", "max_gradient_norm", "mean_gradient_norm", "median_adversarial_distance",
           "median_time_to_success", "read_per_sample", "robust_accuracy", "summary_rows", "write_per_sample"]
