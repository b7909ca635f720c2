"""Estimators of ``log p(x)`` for any model/guide pair that keeps the site contract.

All are plain functions of ``(model, guide, *args)`` returning per-datapoint tensors.
"""

from .bounds import elbo, iwae_bound, log_weight_chunks
from .weights import ImportanceTerms, guess_max_plate_nesting, importance_terms, log_importance_weights

__all__ = [
    "ImportanceTerms",
    "elbo",
    "guess_max_plate_nesting",
    "importance_terms",
    "iwae_bound",
    "log_importance_weights",
    "log_weight_chunks",
]
