"""Train with PyTorch Lightning: :class:`VAEModule`, a ``LightningModule`` around a model/guide pair.

Following Pyro's ``examples/svi_lightning.py``, ``training_step`` returns a loss and ``configure_optimizers`` a
plain ``torch.optim`` optimizer: Lightning's ``Trainer`` then owns the loop (devices, ``strategy="ddp"``,
checkpoints, loggers, early stopping), and the loss is the library's own. The step calls the objective that
:func:`pyro_vae.fit` calls (:func:`pyro_vae.infer.objectives.objective_loss` of a name in
:data:`~pyro_vae.infer.objectives.OBJECTIVES`), divided as :class:`~pyro_vae.train.TrainStep` divides it: the same
loss and gradient on a batch (tested).

Several processes (``Trainer(strategy="ddp")``): Lightning gives each rank its shard of the data
(``DistributedSampler``), and each rank's data plate sees only its shard. As in :mod:`pyro_vae.train.parallel`, a
rank's summed loss is divided by the size of the *global* batch over the number of processes (the ranks' batch
sizes added up), so that DDP's averaging of the gradients gives the gradient of the global batch's mean loss,
whatever the sizes of the shards. The objectives never apply the data plate's subsample scale (the library's one
plate-scale convention, ``docs/contract.md``), so a model whose plate is ``pyro.plate("data", size, len(x))``
trains the same as one whose plate is ``pyro.plate("data", len(x))``.

Lightning is an optional extra: ``pip install 'pyro-vae[lightning]'``; ``import pyro_vae`` never imports it.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Sequence

import pyro
import torch
from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError("pyro_vae.lightning needs PyTorch Lightning: pip install 'pyro-vae[lightning]'") from None

from .datasets import binarize as binarize_batch
from .infer.evaluate import log_likelihood
from .infer.objectives import get_objective, objective_loss
from .infer.weights import check_data_plate, fast_path_owner, plate_layout
from .train.validation import collect_parameters, evaluate_elbo

__all__ = ["VAEModule"]


class VAEModule(pl.LightningModule):
    """A ``LightningModule`` that trains a model/guide pair on the library's objectives.

    The pair is a :class:`pyro_vae.VAE` (or another library model), or your own ``nn.Module`` with ``.model(x)``
    and ``.guide(x)`` keeping the site contract (``pyro.module`` for its networks, ``pyro.plate("data", ...)``,
    the observation site ``"x"``), as in Pyro's VAE tutorial: Lightning trains, checkpoints and synchronises the
    parameters of that module (a ``pyro.param`` site outside it is refused at the first step; make it an
    ``nn.Parameter`` or a ``PyroParam`` of the module).

    Batches are what a ``DataLoader`` gives: a tensor ``x`` of shape ``(B, *event_shape)``, or a list or tuple
    ``(x,)``, or ``(x, y)`` for a conditional model ``model(x, y)``.

    Logged: ``train_loss`` (the objective's loss per datapoint, as ``loss`` in :func:`pyro_vae.fit`'s history) at
    every step; ``val_elbo``, ``val_rate`` and ``val_distortion`` (nats per datapoint, one sample each, as
    ``fit``'s ``val_data``) after each validation; and every ``iwae_every`` epochs (and at every
    ``Trainer.validate``) the IWAE estimate of ``log p(x)`` with ``K = iwae_particles``: ``val_iwae`` (its mean
    over the validation data), ``val_iwae_stderr`` (its standard error over datapoints) and ``val_iwae_mc_stderr``
    (its Monte Carlo error, from disjoint groups of particles,
    :attr:`~pyro_vae.infer.evaluate.LogLikelihoodResult.mean_mc_stderr`).

    :param vae_or_pair: the trained ``nn.Module`` with ``.model`` and ``.guide``.
    :param objective: a name of :data:`~pyro_vae.infer.objectives.OBJECTIVES`: ``"elbo"``, ``"mean-field"``,
        ``"iwae"``, ``"iwae-dreg"``.
    :param num_particles: particles per datapoint (``K`` of the IWAE objectives).
    :param lr: Adam's learning rate.
    :param betas: Adam's ``(beta1, beta2)``.
    :param eps: Adam's epsilon.
    :param beta: the weight of the rate term (beta-VAE; ``"elbo"`` and ``"mean-field"`` only).
    :param binarize: dynamic binarization: a fresh Bernoulli draw of every pixel of each batch (training and
        validation, as :func:`pyro_vae.fit`).
    :param max_plate_nesting: the pair's deepest plate nesting; a library model's own, else guessed from one trace
        of the first batch.
    :param iwae_every: estimate ``log p(x)`` by IWAE every this many epochs (0: never).
    :param iwae_particles: ``K`` of that estimate.
    :param iwae_chunk_size: particles per vectorized pass of the estimate (bounded memory; None: the default of
        :func:`~pyro_vae.infer.log_likelihood`).
    :param data_plate: the name of the pair's plate of datapoints, as for :func:`pyro_vae.fit` and every estimator
        (a name that is no plate of the pair is refused at the first batch).
    :param vectorize_particles: False: one pass per particle, for a pair that cannot broadcast over a leading
        particle dimension (as :func:`pyro_vae.fit`).

    A batch from the ``DataLoader`` is the model's positional arguments: a tensor ``x``, or a tuple ``(x, y)``, or
    the several arguments a ``collate_fn`` builds (``binarize`` applies to the first).

    Example::

        import lightning.pytorch as pl
        from torch.utils.data import DataLoader

        module = VAEModule(pyro_vae.VAE((64,), latent_dim=8), objective="iwae", num_particles=5)
        trainer = pl.Trainer(max_epochs=10, check_val_every_n_epoch=1)
        trainer.fit(module, DataLoader(train, batch_size=100, shuffle=True), DataLoader(test, batch_size=500))

    References: Burda, Grosse, Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016; Pyro's
    ``examples/svi_lightning.py``.
    """

    def __init__(self, vae_or_pair: nn.Module, objective: str = "elbo", num_particles: int = 1, lr: float = 1e-3,
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, beta: float = 1.0, binarize: bool = False,
                 max_plate_nesting: int | None = None, iwae_every: int = 1, iwae_particles: int = 100,
                 iwae_chunk_size: int | None = None, data_plate: str = "data",
                 vectorize_particles: bool = True) -> None:
        super().__init__()
        if not (hasattr(vae_or_pair, "model") and hasattr(vae_or_pair, "guide")):
            raise TypeError("VAEModule needs an object with .model and .guide attributes (a pyro_vae.VAE or your own "
                            "pair)")
        if not isinstance(vae_or_pair, nn.Module):
            raise TypeError("VAEModule trains an nn.Module's parameters (Lightning finds, checkpoints and synchronises "
                            "them there): make your pair a subclass of torch.nn.Module whose networks are attributes "
                            "(pyro.module('decoder', self.decoder) keeps working), or train it with pyro_vae.fit, "
                            "which also trains the param store")
        get_objective(objective)  # an unknown name is refused here, with the choices
        if objective.startswith("iwae") and beta != 1.0:
            raise ValueError(f"beta weighs the rate term of the ELBO; it does not apply to the {objective!r} objective")
        for value, name in ((num_particles, "num_particles"), (iwae_particles, "iwae_particles")):
            if int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if int(iwae_every) != iwae_every or int(iwae_every) < 0:
            raise ValueError(f"iwae_every must be an integer >= 0 (0: never), got {iwae_every!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        self.pair = vae_or_pair
        self.save_hyperparameters(ignore=["vae_or_pair"])
        self.objective, self.num_particles, self.beta = objective, int(num_particles), float(beta)
        self.lr, self.betas, self.eps, self.binarize = float(lr), tuple(betas), float(eps), bool(binarize)
        self.iwae_every, self.iwae_particles = int(iwae_every), int(iwae_particles)
        self.iwae_chunk_size = iwae_chunk_size
        self.data_plate, self.vectorize_particles = str(data_plate), bool(vectorize_particles)
        owner = fast_path_owner(vae_or_pair.model, vae_or_pair.guide)
        self.max_plate_nesting = max_plate_nesting if max_plate_nesting is not None else \
            getattr(owner, "max_plate_nesting", None)
        self._checked = False
        self._sums: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pair's reconstruction of ``x`` (for ``Trainer.predict``; pairs with a ``reconstruct`` method).

        :param x: ``(B, *event_shape)``.
        :returns: ``(B, *event_shape)``.
        """
        return self.pair.reconstruct(x)

    # ---- the batch and the loss

    def _args(self, batch: Any) -> tuple:
        """``(x,)`` or ``(x, y)`` from a DataLoader's batch, binarized if asked, with the plate nesting known."""
        args = (batch,) if torch.is_tensor(batch) else tuple(batch)
        if self.binarize:
            args = (binarize_batch(args[0]), *args[1:])
        if self.max_plate_nesting is None or (self.data_plate != "data" and not self._checked):
            nesting, plates = plate_layout(self.pair.model, self.pair.guide, *args)
            check_data_plate(self.data_plate, plates)
            self.max_plate_nesting = nesting if self.max_plate_nesting is None else self.max_plate_nesting
        return args

    def _check_parameters(self, args: tuple) -> None:
        """Refuse ``pyro.param`` sites that are not parameters of the module (Lightning would not train them)."""
        try:  # the param store's tensors that the pair uses (as fit finds them for a pair that is no module)
            used = collect_parameters(SimpleNamespace(model=self.pair.model, guide=self.pair.guide), args)
        except ValueError:  # none: the module's parameters are all there is
            used = []
        mine = {id(p) for p in self.parameters()}
        outside = {id(p) for p in used if id(p) not in mine}
        if outside:
            names = sorted(n for n, p in pyro.get_param_store().named_parameters() if id(p) in outside)
            raise ValueError(f"the pair's pyro.param sites {names} are not parameters of the module, so Lightning "
                             "would not train them: make them nn.Parameter (or PyroParam) attributes of the module")
        self._checked = True

    def loss(self, args: tuple) -> torch.Tensor:
        """The objective's loss summed over the batch's datapoints (:func:`~pyro_vae.infer.objectives.objective_loss`,
        what :class:`~pyro_vae.train.TrainStep` computes).

        :param args: ``(x,)`` or ``(x, y)``.
        :returns: a differentiable scalar.
        """
        return objective_loss(self.objective, self.pair.model, self.pair.guide, *args,
                              num_particles=self.num_particles, beta=self.beta,
                              max_plate_nesting=self.max_plate_nesting, data_plate=self.data_plate,
                              vectorize_particles=self.vectorize_particles)

    def _denominator(self, size: int, like: torch.Tensor) -> float | torch.Tensor:
        """The global batch's size over the number of processes (the ranks' sizes all-reduced, a tensor: no wait
        for the host): DDP's average of the ranks' gradients is then the gradient of the global batch's mean loss
        (:mod:`pyro_vae.train.parallel`)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return float(size)
        total = self.trainer.strategy.reduce(like.new_tensor(float(size)), reduce_op="sum")
        return total / world

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """:returns: the batch's loss per datapoint (what ``backward`` differentiates)."""
        args = self._args(batch)
        if not self._checked:
            self._check_parameters(args)
        size = args[0].shape[0]
        summed = self.loss(args)
        # logged: this rank's loss per datapoint (under DDP, of its shard, not synchronised: no collective per step)
        self.log("train_loss", summed.detach() / size, prog_bar=True, batch_size=size)
        return summed / self._denominator(size, summed.detach())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """A plain ``torch.optim.Adam`` over the pair's parameters (as :func:`pyro_vae.fit`)."""
        params = [p for p in self.pair.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps)

    # ---- validation: the ELBO every time, the IWAE log p(x) every iwae_every epochs

    def _iwae_due(self) -> bool:
        """Every ``iwae_every`` epochs of ``Trainer.fit`` (not in its sanity check); at every ``Trainer.validate``."""
        if self.iwae_every == 0:
            return False
        if self._trainer is None or self.trainer.state.fn == "validate":
            return True
        return not self.trainer.sanity_checking and (self.current_epoch + 1) % self.iwae_every == 0

    def on_validation_epoch_start(self) -> None:
        self._sums = None

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Add the batch's ELBO, rate and distortion (and when due its IWAE values) to the epoch's sums."""
        args = self._args(batch)  # binarized here when asked: evaluate_elbo and log_likelihood score it as given
        x, extra = args[0], args[1:]
        n = x.shape[0]
        data, condition = (x, extra[0]) if len(extra) == 1 else (args, None)  # several arguments: as they come
        metrics = evaluate_elbo(self.pair, data, batch_size=n, max_plate_nesting=self.max_plate_nesting,
                                distributed=False, condition=condition, data_plate=self.data_plate)
        sums = [n, metrics["elbo"] * n, metrics["rate"] * n, metrics["distortion"] * n]
        if self._iwae_due():
            result = log_likelihood(self.pair.model, self.pair.guide, data, num_particles=self.iwae_particles,
                                    batch_size=n, chunk_size=self.iwae_chunk_size, diagnostics=False,
                                    progress=False, max_plate_nesting=self.max_plate_nesting, distributed=False,
                                    condition=condition, data_plate=self.data_plate,
                                    vectorize_particles=self.vectorize_particles)
            values = result.values.double()
            mc = result.mc_stderr.double().pow(2).sum().item() if result.mc_stderr is not None else math.nan
            sums += [values.sum().item(), values.pow(2).sum().item(), mc]
        batch_sums = torch.tensor(sums, dtype=torch.float64)  # on the CPU (MPS has no float64)
        self._sums = batch_sums if self._sums is None else self._sums + batch_sums

    def on_validation_epoch_end(self) -> None:
        """Add the sums up over the ranks and log the means (the same on every rank)."""
        if self._sums is None:
            return
        sums = self._sums
        if self._trainer is not None and self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum")  # NCCL reduces CUDA tensors
        sums = sums.tolist()
        n = sums[0]
        logged = {"val_elbo": sums[1] / n, "val_rate": sums[2] / n, "val_distortion": sums[3] / n}
        if len(sums) > 4:
            mean = sums[4] / n
            variance = max(sums[5] / n - mean**2, 0.0) * n / (n - 1) if n > 1 else math.nan
            logged.update(val_iwae=mean, val_iwae_stderr=math.sqrt(variance / n),
                          val_iwae_mc_stderr=math.sqrt(sums[6]) / n)
        self.log_dict(logged, sync_dist=True)
        self._sums = None
