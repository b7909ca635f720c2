"""Dai & Wipf's two-stage VAE against a plain VAE and a learned-gamma VAE, scored by the Frechet classifier
distance (FCD), with gamma's trajectory, ``log p(x)`` and a Parzen-window (KDE) baseline.

Three generators of grey-level images (MNIST or Fashion-MNIST, values in [0, 1], no binarization), with the
same encoder/decoder nets and the same training budget:

(a) **plain VAE**: Gaussian decoder with a fixed variance ``gamma = 1`` (likelihood ``"normal"``, scale 1),
    samples decoded from ``z ~ N(0, I)``;
(b) **learned-gamma VAE**: stage 1 of the two-stage VAE (likelihood ``"normal-gamma"``), samples decoded from
    ``z ~ N(0, I)``;
(c) **two-stage VAE**: (b)'s stage 1 plus a second VAE on its latent codes ``z ~ q(z | x)``, redrawn at every
    visit (Dai & Wipf); samples go ``u ~ N(0, I)`` -> ``z ~ p(z | u)`` (stage 2's decoder) -> stage 1's decoder
    mean;
(d) the same with stage 2 trained on stage 1's posterior *means* (the same stage 1 and stage-2 initial weights),
    for comparison.

Sample quality is the FCD (:mod:`pyro_vae.frechet`) between ``--num-fcd`` samples and as many test images, on
the features of a CNN classifier trained here on the labelled training set (saved as ``OUT/classifier.pt`` and
reused). It is **not FID**: only ratios between the models mean something (as in Dai & Wipf's Table 1). The
FCD between training and test images is the floor, and between reconstructions and test images the best an
autoencoder with these nets can do.

Stage 1's ``gamma`` is recorded every epoch, with the validation ELBO: as ``gamma`` falls the ELBO (a density of
continuous data) grows without bound. ``log p(x)`` (IWAE, ``--eval-k`` particles) of the first ``--eval-num``
test images is reported for (a) and (b), next to a Gaussian KDE fitted to ``--kde-train`` training images with
its bandwidth chosen on validation images.

Usage::

    python benchmarks/two_stage.py --smoke-test
    nice -n 10 python benchmarks/two_stage.py --dataset mnist --epochs 10 --out runs/two_stage_mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import pyro
import torch
from common import command_line, machine_info, print_json, utc_date

import pyro_vae
from pyro_vae import datasets, infer
from pyro_vae.frechet import frechet_classifier_distance, load_classifier, train_classifier
from pyro_vae.models import TwoStageVAE


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.dataset, args.epochs, args.stage2_epochs, args.train_num = "digits", 2, 2, 300
        args.num_fcd, args.eval_num, args.eval_k, args.kde_train = 100, 20, 10, 500
        args.latent_dim, args.hidden_dims, args.stage2_hidden_dims, args.classifier_epochs = 4, "32", "32", 1
    hidden = tuple(int(h) for h in args.hidden_dims.split(","))
    hidden2 = tuple(int(h) for h in args.stage2_hidden_dims.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = datasets.load(args.dataset, "train", root=args.data_root, return_labels=True)
    x_test = datasets.load(args.dataset, "test", root=args.data_root)
    x_valid = datasets.load(args.dataset, "valid", root=args.data_root)
    if args.train_num:
        x_fit = x_train[:args.train_num]
    else:
        x_fit = x_train
    t0 = time.perf_counter()
    clf_path = out / "classifier.pt"
    if clf_path.exists() and not args.smoke_test:
        clf = load_classifier(clf_path, tuple(x_train.shape[1:]))
    else:
        torch.manual_seed(args.seed)
        n_clf = args.train_num if args.smoke_test else None
        clf = train_classifier(x_train[:n_clf], y_train[:n_clf], epochs=args.classifier_epochs, seed=args.seed,
                               path=clf_path)
    x_test_all, y_test = datasets.load(args.dataset, "test", root=args.data_root, return_labels=True)
    with torch.no_grad():
        accuracy = float((clf(x_test_all).argmax(1) == y_test).float().mean())
    clf_seconds = time.perf_counter() - t0
    real = x_test[:args.num_fcd]
    fit_kwargs = dict(batch_size=args.batch_size, lr=args.lr, device="cpu", seed=args.seed, progress=False)

    def log(stage: str, r: dict[str, Any]) -> None:
        extra = f", gamma {r['gamma']:.5f}" if "gamma" in r else ""
        print(f"  [{stage}] epoch {r['epoch']}: loss {r['loss']:.2f}, val ELBO {r.get('val_elbo', float('nan')):.2f}"
              f"{extra} ({r['seconds']:.0f} s)", flush=True)

    # (a) plain VAE, gamma fixed at 1
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    plain = pyro_vae.VAE(x_train.shape[1:], latent_dim=args.latent_dim, hidden_dims=hidden, activation="relu",
                         likelihood="normal", likelihood_options={"scale": 1.0}, encoder=args.encoder,
                         decoder=args.decoder)
    h_plain = pyro_vae.fit(plain, x_fit, epochs=args.epochs, val_data=x_valid[:1000],
                           on_epoch_end=lambda r: log("plain", r), **fit_kwargs)
    # (b) + (c): the two-stage VAE, whose stage 1 is the learned-gamma VAE
    pyro.set_rng_seed(args.seed)
    tsv = TwoStageVAE(x_train.shape[1:], latent_dim=args.latent_dim, hidden_dims=hidden, stage2_hidden_dims=hidden2,
                      activation="relu", encoder=args.encoder, decoder=args.decoder)
    h_two = tsv.fit(x_fit, epochs=args.epochs, stage2_epochs=args.stage2_epochs, val_data=x_valid[:1000],
                    on_epoch_end=lambda s, r: log(f"stage {s}", r), **fit_kwargs)
    # (d) stage 2 again, from the same initial weights, on the posterior means
    pyro.set_rng_seed(args.seed)
    fresh = TwoStageVAE(x_train.shape[1:], latent_dim=args.latent_dim, hidden_dims=hidden,
                        stage2_hidden_dims=hidden2, activation="relu", encoder=args.encoder, decoder=args.decoder)
    tsv_means = copy.deepcopy(tsv)
    tsv_means.stage2.load_state_dict(fresh.stage2.state_dict())
    h_means = pyro_vae.fit(tsv_means.stage2, tsv.codes(x_fit), epochs=args.stage2_epochs or args.epochs,
                           val_data=tsv.codes(x_valid[:1000]), on_epoch_end=lambda r: log("stage 2 on means", r),
                           **fit_kwargs)
    for m in (plain, tsv, tsv_means):
        m.eval()

    torch.manual_seed(args.seed)
    samples = {
        "plain VAE (gamma = 1)": plain.sample(args.num_fcd).clamp(0, 1),
        "learned-gamma VAE (stage 1 only)": tsv.sample(args.num_fcd, stages=1).clamp(0, 1),
        "two-stage VAE": tsv.sample(args.num_fcd, stages=2).clamp(0, 1),
        "two-stage VAE, stage 2 on means": tsv_means.sample(args.num_fcd, stages=2).clamp(0, 1),
    }
    # the spread of the codes per dimension: posterior means, draws z ~ q(z | x), and each stage 2's samples
    with torch.no_grad():
        torch.manual_seed(args.seed)
        spread = {"posterior means": tsv.codes(x_fit).var(0).tolist(),
                  "z ~ q(z | x) (aggregate posterior)": tsv.codes(x_fit, sample=True).var(0).tolist(),
                  "stage 2 on samples": tsv.stage2.sample(args.num_fcd, mean=False).var(0).tolist(),
                  "stage 2 on means": tsv_means.stage2.sample(args.num_fcd, mean=False).var(0).tolist(),
                  "stage 2 on samples, decoder means": tsv.stage2.sample(args.num_fcd, mean=True).var(0).tolist()}
        stage2_gamma = {"samples": float(tsv.stage2.likelihood.gamma),
                        "means": float(tsv_means.stage2.likelihood.gamma)}
    fcd = {name: frechet_classifier_distance(clf, real, s) for name, s in samples.items()}
    fcd_reference = {
        "training images (floor)": frechet_classifier_distance(clf, real, x_train[:args.num_fcd]),
        "learned-gamma VAE reconstructions": frechet_classifier_distance(
            clf, real, tsv.reconstruct(x_test[-args.num_fcd:]).clamp(0, 1)),
        "plain VAE reconstructions": frechet_classifier_distance(
            clf, real, plain.reconstruct(x_test[-args.num_fcd:]).clamp(0, 1)),
    }
    # log p(x) of continuous data: densities; the VAE with small gamma concentrates on the data manifold
    x_eval = x_test[:args.eval_num]
    ll = {}
    for name, m in (("plain VAE (gamma = 1)", plain), ("learned-gamma VAE", tsv)):
        r = infer.log_likelihood(m.model, m.guide, x_eval, num_particles=args.eval_k, batch_size=50, seed=args.seed,
                                 progress=False, diagnostics=False)
        ll[name] = {"log_likelihood": r.mean, "stderr": r.stderr, "elbo": float(r.elbo.mean()),
                    "rate": float(r.rate.mean()), "distortion": float(r.distortion.mean())}
    kde = infer.kde_log_likelihood(x_train[:args.kde_train], x_eval, val_data=x_valid[:500])
    ll["Gaussian KDE (Parzen)"] = {"log_likelihood": kde.mean, "stderr": kde.stderr, "bandwidth": kde.bandwidth}
    usage = infer.latent_usage(tsv.model, tsv.guide, x_eval)["z"]
    plain_usage = infer.latent_usage(plain.model, plain.guide, x_eval)["z"]
    with torch.no_grad():
        z_loc, z_scale = tsv.stage1.encode(x_eval)
        mse = float(((tsv.reconstruct(x_eval) - x_eval) ** 2).flatten(1).mean())
    record = {
        "dataset": args.dataset, "epochs": args.epochs, "stage2_epochs": args.stage2_epochs or args.epochs,
        "train_num": int(x_fit.shape[0]), "latent_dim": args.latent_dim, "hidden_dims": list(hidden),
        "stage2_hidden_dims": list(hidden2), "encoder": args.encoder, "decoder": args.decoder,
        "num_fcd": args.num_fcd, "classifier_test_accuracy": accuracy, "classifier_seconds": clf_seconds,
        "fcd": fcd, "fcd_reference": fcd_reference,
        "fcd_ratio_two_stage_to_plain": fcd["two-stage VAE"] / fcd["plain VAE (gamma = 1)"],
        "fcd_ratio_two_stage_to_learned_gamma": fcd["two-stage VAE"] / fcd["learned-gamma VAE (stage 1 only)"],
        "fcd_ratio_samples_to_means": fcd["two-stage VAE"] / fcd["two-stage VAE, stage 2 on means"],
        "code_variance_per_dim": spread, "stage2_gamma": stage2_gamma,
        "stage2_val_elbo": {"samples": [r.get("val_elbo") for r in h_two["stage2"]],
                            "means": [r.get("val_elbo") for r in h_means]},
        "gamma_trajectory": [r["gamma"] for r in h_two["stage1"]],
        "stage1_val_elbo": [r.get("val_elbo") for r in h_two["stage1"]],
        "plain_val_elbo": [r.get("val_elbo") for r in h_plain],
        "final_gamma": tsv.gamma, "reconstruction_mse": mse,
        "log_likelihood": ll, "eval_num": int(x_eval.shape[0]), "eval_k": args.eval_k,
        "active_units_learned_gamma": usage["active_units"], "active_units_plain": plain_usage["active_units"],
        "posterior_scale_per_dim_learned_gamma": z_scale.mean(0).tolist(),
        "kde_bandwidth": kde.bandwidth, "kde_train": args.kde_train,
        "machine": machine_info(), "command": command_line(), "date": utc_date(), "smoke_test": bool(args.smoke_test),
    }
    (out / "two_stage.json").write_text(json.dumps(record, indent=1))
    torch.save({"plain": plain.state_dict(), "two_stage": tsv.state_dict()}, out / "models.pt")
    if not args.no_figure:
        _figure(samples, x_test[:64], out / "samples.png", args.dataset)
    print_json({k: v for k, v in record.items() if k not in ("machine", "posterior_scale_per_dim_learned_gamma",
                                                              "code_variance_per_dim")})
    return record


def _figure(samples: dict[str, torch.Tensor], real: torch.Tensor, path: Path, dataset: str) -> None:
    from pyro_vae.plots import image_panels

    # at most three panels a row, titles in a large font: readable when the page shrinks the figure
    image_panels({f"test images ({dataset})": real, **samples}, path, ncols=3, dpi=80)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="mnist or fashion-mnist (digits for --smoke-test)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the plain VAE and of stage 1")
    p.add_argument("--stage2-epochs", type=int, default=None, help="epochs of stage 2 (default: --epochs)")
    p.add_argument("--train-num", type=int, default=None, help="train the VAEs on the first N training images")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--hidden-dims", default="512,512")
    p.add_argument("--stage2-hidden-dims", default="512,512")
    p.add_argument("--encoder", default="mlp")
    p.add_argument("--decoder", default="mlp")
    p.add_argument("--classifier-epochs", type=int, default=2)
    p.add_argument("--num-fcd", type=int, default=5000, help="samples and test images per FCD")
    p.add_argument("--eval-num", type=int, default=500, help="test images for log p(x)")
    p.add_argument("--eval-k", type=int, default=1000, help="particles for log p(x)")
    p.add_argument("--kde-train", type=int, default=10000, help="training images as KDE kernel centres")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--out", default="runs/two_stage")
    p.add_argument("--smoke-test", action="store_true", help="tiny models on sklearn digits, seconds")
    return p


if __name__ == "__main__":
    main(parser().parse_args())
