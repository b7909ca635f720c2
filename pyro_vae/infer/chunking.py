"""How many particles one vectorized pass draws: the one chunking rule of every estimator.

An estimator with ``K`` particles of a batch ``x`` of shape ``(N, *event_shape)`` scores them in passes of
``C`` particles; a pass holds tensors of ``C x N x event size`` values (the decoder's output for every particle
and datapoint, its ``log_prob``, the activations of its layers), so memory and speed depend on ``C x N x D``,
not on ``K``. With ``chunk_size=None`` (the default of :func:`~pyro_vae.infer.elbo`,
:func:`~pyro_vae.infer.iwae_bound`, :func:`~pyro_vae.infer.log_likelihood`,
:func:`~pyro_vae.infer.exact_log_likelihood`, :func:`~pyro_vae.infer.to_inference_data`, ...) the pass takes

.. math::

    C = \\min\\Big(K,\\; \\max\\big(1,\\; \\Big\\lfloor \\frac{B}{N \\cdot \\max(D, D_0)}
        \\Big\\rfloor\\big)\\Big)

particles, where ``B`` is :data:`PARTICLE_VALUES_BUDGET` (``2**25``), ``D`` the number of values of one
datapoint (784 for MNIST) and ``D_0`` :data:`MIN_VALUES_PER_DATAPOINT` (512: for data of a few dimensions the
decoder's hidden layers, not the data, are the largest tensors of a pass). That is 427 particles for a batch of
100 MNIST images (a float32 tensor of ``C x N x D`` values is 128 MiB), the whole of ``K`` for small batches and
small ``K``. One pass of all ``K = 5000`` particles of 100 MNIST images would hold 1.5 GB in each such tensor;
``benchmarks/iwae_speed.py --eval-only`` measures the default's time and memory against one pass and against a
hand-written chunked estimator. The chunks change how the particles are grouped, never the estimate: chunked and
unchunked results of the same draws agree to floating-point reordering (a running log-sum-exp over chunks).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import whole_number

__all__ = ["MIN_VALUES_PER_DATAPOINT", "PARTICLE_VALUES_BUDGET", "particles_per_chunk"]

#: values (particles x datapoints x values per datapoint) one vectorized pass may hold: ``2**25``, 128 MiB per
#: float32 tensor of that size
PARTICLE_VALUES_BUDGET = 2 ** 25
#: the values one datapoint counts for at least (hidden layers wider than the data)
MIN_VALUES_PER_DATAPOINT = 512


def particles_per_chunk(num_particles: int, x: Any = None, chunk_size: int | None = None) -> int:
    """The particles of one vectorized pass: ``chunk_size`` when given, else the rule of the module docstring.

    :param num_particles: ``K``, the particles per datapoint in all.
    :param x: the batch ``(N, *event_shape)``; anything else counts as one datapoint.
    :param chunk_size: the caller's choice (an integer >= 1), or None for the budget.
    :returns: an ``int`` in ``[1, K]`` (or ``chunk_size`` as given, which may exceed ``K``).
    :raises ValueError: for a ``chunk_size`` that is not a whole number >= 1.
    """
    if chunk_size is not None:
        return whole_number(chunk_size, "chunk_size (particles per pass)")
    n, d = (x.shape[0], math.prod(x.shape[1:])) if torch.is_tensor(x) and x.dim() >= 1 else (1, 1)
    values = max(n, 1) * max(d, MIN_VALUES_PER_DATAPOINT)
    return min(int(num_particles), max(1, PARTICLE_VALUES_BUDGET // values))
