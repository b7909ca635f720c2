"""The recipe of a two-stage run (``pyro-vae train --two-stage``): Dai & Wipf's :class:`~pyro_vae.TwoStageVAE`,
stage 1 on the grey data with a learned decoder variance gamma, stage 2 on stage 1's codes, each checkpointed in
its own folder (``stage1/``, ``stage2/``); ``history.json`` holds both stages. Resuming with more stage-1 epochs
trains stage 2 again on the new codes (the old stage 2 is kept). ``log p(x)`` is stage 1's: the two-stage sampler's
own density has none that is tractable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import datasets
from ...io import write_json
from ...runs import read_metrics
from ..registry import register_kind
from ..settings import RunSettings
from .base import RunContext, RunData
from .vae import VAEKind

__all__ = ["TwoStageKind"]


@register_kind
class TwoStageKind(VAEKind):
    """A :class:`~pyro_vae.TwoStageVAE` run, selected by ``two_stage``."""

    name = "TwoStageVAE"
    single_process = True
    selected_by = "two_stage"
    fresh_folder = True

    def configure(self, s: RunSettings, given: dict[str, Any]) -> RunSettings:
        if given.get("layers") is not None:
            raise ValueError("choose either --two-stage or --layers, not both")
        return s.replace(stage2_codes=s.stage2_codes or "samples")

    def resumed(self, s: RunSettings, given: dict[str, Any], saved: dict[str, Any], out: Path) -> RunSettings:
        # a resumed run keeps what its stage 2 trains on; runs older than the option trained on the means
        saved_codes = (saved.get("training") or {}).get("stage2_codes", "means")
        codes = given.get("stage2_codes") or saved_codes or "samples"
        if saved_codes and codes != saved_codes and (out / "stage2" / "checkpoint.pt").exists():
            raise ValueError(f"--stage2-codes {codes} differs from the run's {saved_codes!r}, and its stage 2 has "
                             "started: a resumed stage 2 keeps its training data (start a new run instead)")
        return s.replace(stage2_codes=codes, stage2_epochs=given.get("stage2_epochs", s.stage2_epochs))

    def refuse_stray(self, given: dict[str, Any], chosen: Any, out: Path | None) -> None:
        super().refuse_stray(given, chosen, out)
        _check_codes(given.get("stage2_codes"))

    def check(self, s: RunSettings) -> None:
        _check_codes(s.stage2_codes)

    def read_data(self, s: RunSettings, out: Path, resume: bool) -> tuple[RunSettings, RunData]:
        # stage 1 models grey levels (a Gaussian decoder): no binarization
        _, data = super().read_data(s.replace(binarize=False), out, resume)
        return s.replace(binarize=False), data

    def build(self, s: RunSettings, data: RunData, out: Path) -> Any:
        from ...models import TwoStageVAE

        likelihood = s.likelihood if s.likelihood in ("normal-gamma", "normal-learned") else "normal-gamma"
        return TwoStageVAE(datasets.event_shape(s.dataset), latent_dim=s.latent_dim,
                           hidden_dims=tuple(s.hidden_dims or ()), stage2_hidden_dims=tuple(s.hidden_dims or ()),
                           activation=s.activation, encoder=s.encoder, decoder=s.decoder,
                           stage1_likelihood=likelihood)

    def trained(self, model: Any) -> Any:
        return model.stage1

    def config(self, s: RunSettings, model: Any, data: RunData) -> dict[str, Any]:
        config = super().config(s, model, data)
        config["training"].update(stage2_epochs=s.stage2_epochs, stage2_codes=s.stage2_codes)
        return config

    def epochs_done(self, out: Path) -> int:
        return len(read_metrics(out / "stage1"))

    def before_training(self, model: Any, ctx: RunContext) -> None:
        s, out = ctx.settings, ctx.out
        done = (self.epochs_done(out), len(read_metrics(out / "stage2"))) if ctx.resume else (0, 0)
        stage2_epochs = s.stage2_epochs or s.epochs
        # more stage-1 epochs change the codes stage 2 learned: stage 2 then starts again (its old folder is kept)
        if done[1] > 0 and s.epochs > done[0]:
            if ctx.main:
                kept = _unused(out / f"stage2-on-stage1-epoch{done[0]}")
                (out / "stage2").rename(kept)
                ctx.say(f"stage 1 trains from epoch {done[0]} to {s.epochs}; stage 2 was fitted to the codes of epoch "
                        f"{done[0]}, so it starts again on the new ones (the old stage 2 is kept in {kept})",
                        flush=True)
        elif ctx.resume and done[0] >= s.epochs and done[1] >= stage2_epochs:
            ctx.say(f"the run has {done[0]} complete epochs (stage 2: {done[1]}), as many as asked (--epochs "
                    f"{s.epochs}): nothing to train; its outputs are written again", flush=True)

    def callbacks(self, model: Any, ctx: RunContext) -> list[Any]:
        from ...train import TensorBoard

        return [TensorBoard(ctx.out / "tensorboard")] if ctx.tensorboard and ctx.main else []

    def train(self, model: Any, ctx: RunContext) -> Any:
        from ...train.callbacks import epoch_line

        s = ctx.settings
        history = model.fit(ctx.data.train, epochs=s.epochs, stage2_epochs=s.stage2_epochs, val_data=ctx.data.valid,
                            stage2_codes=s.stage2_codes,
                            on_epoch_end=lambda stage, r: ctx.log.line(f"stage {stage} {epoch_line(r)}"),
                            **self.fit_options(model, ctx))
        if ctx.main:
            write_json(history, ctx.out / "history.json")  # both stages; stage 1's with gamma per epoch
        return history

    def model_metrics(self, model: Any) -> dict[str, Any]:
        return {"gamma": model.gamma}

    def history_length(self, history: Any) -> int:
        return len(history["stage1"])

    def figures(self, model: Any, history: Any, ctx: RunContext) -> list[Path]:
        import pyro

        from ...drawing import image_grid, is_image_shape, training_curves

        if not is_image_shape(ctx.data.train.shape[1:]):
            return super().figures(model, history["stage1"], ctx)
        pyro.set_rng_seed(ctx.settings.seed)
        image_grid(model.sample(64).clamp(0, 1).cpu(), path=ctx.out / "samples.png",
                   title="two-stage samples (decoder means)")
        training_curves(history["stage1"], ctx.out / "training.png")
        return [ctx.out / "samples.png", ctx.out / "training.png"]

    def measured(self, model: Any) -> Any:
        return model.stage1

    def describe(self, config: dict[str, Any]) -> str:
        return ("stage 1 of the two-stage VAE (its decoder under the prior N(0, I)); the two-stage sampler's own "
                "density has no tractable log p(x)")

    def histories(self, run_dir: Path) -> dict[str, tuple[list[dict[str, Any]], str | None]]:
        # fit's metrics of each stage, stage 1's with gamma per epoch
        return {"training.png": (read_metrics(run_dir / "stage1"), "stage 1: the VAE on the data"),
                "training_stage2.png": (read_metrics(run_dir / "stage2"), "stage 2: the VAE on stage 1's codes")}


def _check_codes(codes: str | None) -> None:
    from ...train.two_stage import STAGE2_CODES

    if codes is not None and codes not in STAGE2_CODES:
        raise ValueError(f"--stage2-codes must be one of {', '.join(STAGE2_CODES)}, got {codes!r}")


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... the first that does not exist."""
    candidate, i = path, 1
    while candidate.exists() or candidate.is_symlink():
        i += 1
        candidate = path.with_name(f"{path.name}-{i}")
    return candidate
