"""The compiled training step of ``fit(..., compile=True)``: :class:`CompiledStep`.

A small network's step is bound by Python and kernel launches, not by arithmetic (on the H200 of
``docs/benchmarks.md`` a step of a 0.4-million-weight VAE takes about 3.8 ms, eager). :class:`CompiledStep` is
:class:`~pyro_vae.train.step.TrainStep` with its work captured by ``torch.compile``, once per batch shape:

- **the loss**: the library model's importance terms (:func:`~pyro_vae.infer.weights.direct_producer`, plain
  torch), the objective and the division by the denominator, one graph whose backward AOTAutograd compiles too
  (``backward()`` runs the compiled backward graph);
- **the update**: gradient clipping and Adam's update, one graph, with the arithmetic of torch's fused Adam kernel
  (which ``torch.compile`` does not trace) on the optimizer's own state, and a small graph before it that counts
  the step and computes Adam's bias corrections in double, as that kernel does (inside the update's graph the
  compiler would compute them again for every vector of every parameter).

On CUDA they run as CUDA graphs (``"triton.cudagraphs"``, the ``mode="reduce-overhead"`` of ``torch.compile``):
captured on first use and replayed, one launch per graph. On the CPU they run as inductor's C++ kernels.

What keeps working, and how:

- **schedules are tensors**: the learning rate (each epoch's value of the ``lr_schedule``, halved by a NaN
  rollback) reaches the update as a 0-dim tensor filled when it changes, and a rate weight ``beta != 1`` (KL
  warm-up) reaches the loss as one: neither is a constant of the graph, so a schedule never recompiles. A
  ``beta`` of exactly 1 selects the unweighted ELBO (a second graph at most, when a warm-up ends);
- **the same draws as the eager step**: inductor calls torch's own random kernels (``fallback_random``), so a
  seed gives the draws of ``compile=False`` and the compiled step equals the eager one up to float rounding
  (tested on the CPU);
- **the first step and the NaN guard's replay run eagerly** (the parent's ``__call__``): the first validates the
  distributions (when Pyro's validation is on) and creates Adam's state as the eager optimizer does; the replay
  needs the check hooks between the loss, the gradients and the update. The optimizer stays the run's own
  (``float`` learning rate, torch's fused kernel for the eager steps): checkpoints, resume and rollback see the
  same state whichever step ran, and a resumed run may switch ``compile`` on or off. A rollback restores the
  optimizer's state into new tensors: the update takes its tensors as arguments, so nothing is compiled again
  (on CUDA the graphs are captured again for the new addresses);
- dynamic binarization and ``data_scale`` draw each batch before the step, as without ``compile``.

What falls back to the eager step, with one warning saying why: a pair whose terms are traced (a user's own
model and guide, ``direct_terms=False``, a ``data_plate`` other than ``"data"``), and an optimizer other than
``fit``'s Adam (several groups, weight decay, amsgrad). Refused before any work:
several processes (``torchrun``): the step's loss goes through ``DistributedDataParallel``'s wrapper, which this
step does not capture.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import pyro
import torch

from ..infer.weights import direct_producer, direct_terms_owner
from .step import StepCheck, TrainStep

__all__ = ["CompiledStep", "refuse_distributed"]

#: Adam's options that the compiled update does not implement (fit never sets them)
_ADAM_VARIANTS = ("weight_decay", "amsgrad", "maximize", "decoupled_weight_decay")


def refuse_distributed(compile: bool, distributed: bool | None) -> None:
    """Refuse ``compile=True`` with several processes, before any work.

    :raises ValueError: saying why and what to do.
    """
    if compile and distributed:
        raise ValueError("compile=True is not supported with several processes (torchrun, distributed=True): the "
                         "step's loss goes through DistributedDataParallel, which the compiled step does not "
                         "capture; train with compile=False, or in one process")


class CompiledStep(TrainStep):
    """:class:`~pyro_vae.train.step.TrainStep` with the loss (importance terms, objective, backward) and the update
    (clipping, Adam) compiled by ``torch.compile``, once per batch shape; see the module's docstring. Takes the
    arguments of :class:`~pyro_vae.train.step.TrainStep`.

    :attr:`fallback` says why the step is not compiled (None when it is): a pair without direct terms.
    """

    def __init__(self, vae: Any, objective: Callable[..., torch.Tensor], optimizer: torch.optim.Optimizer,
                 params: list[torch.Tensor], **options: Any) -> None:
        super().__init__(vae, objective, optimizer, params, **options)
        owner = direct_terms_owner(self.model, self.guide) if self.data_plate == "data" else None
        self.fallback: str | None = None
        if owner is None:
            self.fallback = (f"compile=True compiles the direct terms of the library's models, and this "
                             f"{type(vae).__name__}'s terms are traced (a pair of your own, direct_terms=False or "
                             "another data_plate): training with the eager step")
        elif len(optimizer.param_groups) != 1 or any(optimizer.param_groups[0].get(k) for k in _ADAM_VARIANTS):
            self.fallback = ("compile=True takes fit's Adam (one group of parameters, no weight decay, amsgrad or "
                             "maximize): training with the eager step")
        if self.fallback is not None:
            warnings.warn(self.fallback, UserWarning, stacklevel=3)
            return
        self.owner = owner
        device, dtype = params[0].device, params[0].dtype
        self.cuda_graphs = device.type == "cuda"
        settings = {"fallback_random": True, **({"triton.cudagraphs": True} if self.cuda_graphs else {})}
        self._loss = torch.compile(self._scaled_loss, dynamic=False, options=settings)
        self._corrections_graph = torch.compile(self._corrections, dynamic=False, options=settings)
        self._update_graph = torch.compile(self._clip_and_update, dynamic=False, options=settings)
        self._lr = torch.zeros((), device=device, dtype=dtype)
        self._beta = torch.zeros((), device=device, dtype=dtype)
        self.adam_options = {k: optimizer.param_groups[0][k] for k in ("betas", "eps")}
        self._filled: dict[int, float] = {}
        self._started = False

    def _scaled_loss(self, args: tuple, denominator: float,
                     beta: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compiled: the batch's summed loss (detached) and the loss divided by ``denominator`` (differentiable)."""
        loss = self.objective(direct_producer(self.owner, args), num_particles=self.num_particles, beta=beta)
        return loss.detach(), loss / denominator

    def _corrections(self, steps: list[torch.Tensor], lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compiled apart: count the step, and Adam's step size and ``sqrt(1 - beta2**t)`` computed in double from
        the count, as torch's fused kernel does (a graph of its own: inside the update's graph the compiler would
        compute these scalars again for every vector of every parameter)."""
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            beta1, beta2 = self.adam_options["betas"]
            count, dtype = steps[0].to(torch.float64), lr.dtype  # one count for the group
            return ((lr.to(torch.float64) / (1 - beta1**count)).to(dtype),
                    (1 - beta2**count).sqrt().to(dtype))

    def _clip_and_update(self, params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                         exp_avg_sqs: list[torch.Tensor], step_size: torch.Tensor,
                         correction2_sqrt: torch.Tensor) -> None:
        """Compiled: clip the gradients' global norm (``clip_grad_norm_``'s arithmetic), then Adam's update on the
        optimizer's own state (the arithmetic of torch's fused kernel, which is not traced). Every tensor is an
        argument: one graph serves every step, every epoch's learning rate and the state a rollback restores (no
        guard on an object's identity)."""
        with torch.no_grad():
            if self.clip_norm is not None:
                total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
                torch._foreach_mul_(grads, torch.clamp(self.clip_norm / (total + 1e-6), max=1.0))
            beta1, beta2 = self.adam_options["betas"]
            eps = self.adam_options["eps"]
            for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.sub_(step_size * m / (v.sqrt() / correction2_sqrt + eps))

    def _fill(self, tensor: torch.Tensor, value: float) -> torch.Tensor:
        """``tensor`` holding ``value`` (filled only when the value changed: no work on most steps)."""
        if self._filled.get(id(tensor)) != value:
            tensor.fill_(value)
            self._filled[id(tensor)] = value
        return tensor

    def _update(self) -> None:
        """The compiled update on the parameters, their gradients, Adam's state of each (the optimizer's own
        tensors) and the learning rate as a tensor."""
        params = [p for p in self.params if p.grad is not None]
        states = [self.optimizer.state[p] for p in params]
        steps = [s["step"] for s in states]
        tensors = (params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states])
        if self.cuda_graphs:  # the graphs read and update them where they are
            for t in (*tensors[0], *tensors[2], *tensors[3], *steps):
                torch._dynamo.mark_static_address(t, guard=False)
        lr = self._fill(self._lr, float(self.optimizer.param_groups[0]["lr"]))
        self._update_graph(*tensors, *self._corrections_graph(steps, lr))

    def __call__(self, args: tuple, denominator: float, beta: float = 1.0,
                 check: StepCheck | None = None) -> torch.Tensor:
        """As :meth:`TrainStep.__call__ <pyro_vae.train.step.TrainStep.__call__>`; eager for the first step, the
        NaN guard's replay (``check``) and a pair without direct terms."""
        if self.fallback is not None or check is not None or not self._started:
            self._started = True
            return super().__call__(args, denominator, beta, check)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        weight = 1.0 if beta == 1.0 else self._fill(self._beta, float(beta))
        with pyro.validation_enabled(False):
            value, scaled = self._loss(args, float(denominator), weight)
            self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            self._update()
        return value.clone() if self.cuda_graphs else value  # a CUDA graph's output is overwritten by its next replay
