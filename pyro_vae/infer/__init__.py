"""Estimators of ``log p(x)`` for any model/guide pair that keeps the site contract.

All are plain functions of ``(model, guide, *args)`` returning per-datapoint tensors:

- :func:`log_importance_weights` ``(K, N)``, :func:`elbo` ``(N,)``, :func:`iwae_bound` ``(N,)``;
- :func:`log_likelihood` over a data set, with diagnostics (:class:`LogLikelihoodResult`), and
  :func:`ais_log_likelihood`, AIS over a data set (its settings in :class:`AISOptions`);
- :func:`exact_log_likelihood` by quadrature for latents of dimension <= 2;
- :func:`latent_usage`: active units, KL per dimension, mutual information;
- :func:`kde_log_likelihood`: the Parzen-window (Gaussian KDE) baseline, model-free;
- ArviZ / xarray export of draws, weights and diagnostics (:func:`to_inference_data`, :func:`psis_khat`);
- :func:`ais` (annealed importance sampling) and :func:`bdmc` (its sandwich on simulated data);
- :func:`sumo`, an unbiased estimate of ``log p(x)`` (Russian-roulette debiasing of IWAE, Luo et al. 2020);
- training objectives in :mod:`pyro_vae.infer.objectives` (IWAE correct under subsampling, DReG).

Everything is written once on the engine of :mod:`pyro_vae.infer.weights`: a batch's importance terms. Every
estimator draws its particles in chunks by one rule (:func:`particles_per_chunk`), and every result's mean and
errors come from one base (:class:`PerDatapointSummary`).
"""

from .annealing import AISOptions, AISResult, BDMCResult, ais, ais_log_likelihood, bdmc
from .arviz import importance_draws, psis_khat, result_to_dataset, to_inference_data
from .bounds import elbo, iwae_bound, log_weight_chunks
from .chunking import PARTICLE_VALUES_BUDGET, particles_per_chunk
from .diagnostics import latent_usage
from .evaluate import (
    DEFAULT_K_VALUES,
    Comparison,
    LogLikelihoodResult,
    PerDatapointSummary,
    compare,
    effective_sample_size,
    k_curve,
    log_likelihood,
    pareto_khat,
    replicate_stderr,
)
from .exact import exact_log_likelihood
from .kde import KDEResult, kde_log_likelihood
from .objectives import OBJECTIVES, dreg_loss, iwae_loss
from .sumo import SUMOResult, sumo
from .weights import ImportanceTerms, guess_max_plate_nesting, importance_terms, log_importance_weights

__all__ = [
    "AISOptions",
    "AISResult",
    "BDMCResult",
    "Comparison",
    "DEFAULT_K_VALUES",
    "ImportanceTerms",
    "KDEResult",
    "LogLikelihoodResult",
    "SUMOResult",
    "OBJECTIVES",
    "PerDatapointSummary",
    "PARTICLE_VALUES_BUDGET",
    "ais",
    "ais_log_likelihood",
    "bdmc",
    "compare",
    "dreg_loss",
    "effective_sample_size",
    "elbo",
    "exact_log_likelihood",
    "guess_max_plate_nesting",
    "importance_draws",
    "importance_terms",
    "iwae_bound",
    "iwae_loss",
    "kde_log_likelihood",
    "k_curve",
    "latent_usage",
    "log_importance_weights",
    "log_likelihood",
    "log_weight_chunks",
    "pareto_khat",
    "particles_per_chunk",
    "psis_khat",
    "replicate_stderr",
    "result_to_dataset",
    "sumo",
    "to_inference_data",
]
