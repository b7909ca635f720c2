"""The semi-supervised VAE's protocol and training options (issue 32): the validation split apart from the labelled
and unlabelled data, the best-validation model kept and reported, and each option (the auxiliary step, the loss
scale, Adam's beta1, the initialisation, grey targets) reaching the step, through fit_semi_supervised and the run
pipeline, resumed as a run never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pyro_vae
from pyro_vae import SSVAE, fit_semi_supervised
from pyro_vae.pipeline import RunSettings, run_settings, train_run
from pyro_vae.pipeline.kinds import SemiSupervisedKind
from pyro_vae.pipeline.kinds.semi_supervised import model_accuracy
from pyro_vae.train.semi_supervised import init_hidden_normal_
from pyro_vae.train.state import load_checkpoint

TINY = {"dataset": "digits", "semi_supervised": True, "labels": 50, "num_unlabelled": 300, "hidden_dims": "32",
        "latent_dim": 4, "epochs": 2, "test_particles": 4, "lr": 3e-3}


def _quiet(*args, **kwargs):
    pass


def _small():
    torch.manual_seed(0)
    return SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,))


def _data(n, seed=0):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed)).round()


#: the model the last _fit trains (its weights read by callbacks during training)
ssvae_ref: list = [None]


def _fit(folder=None, **options):
    """A small M2 on fixed data: 3 labelled datapoints in one batch, 12 unlabelled in batches of 6 (batches of two
    sizes, else labelled and unlabelled steps weigh alike whatever the loss scale)."""
    ssvae = ssvae_ref[0] = _small()
    x, y = _data(6), torch.tensor([0, 1, 2, 0, 1, 2])
    kwargs = dict(epochs=2, batch_size=6, lr=1e-2, seed=0, progress=False, val_data=(x, y))
    history = fit_semi_supervised(ssvae, x[:3], y[:3], _data(12, seed=1), **{**kwargs, **options},
                                  checkpoint_dir=folder)
    return ssvae, history


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


# ------------------------------------------------------------------------------------------------ the protocol
def test_the_validation_split_is_apart_from_the_labelled_and_unlabelled_data():
    """Pyro's protocol: labelled and unlabelled datapoints from the training split without its tail, the
    validation split that tail; no validation datapoint trains, by index and by value."""
    import pyro_vae.datasets as datasets

    s, out = run_settings(TINY, "x")
    s, data = SemiSupervisedKind().read_data(s, out, False)
    assert data.splits[:2] == ("train-without-valid", "valid")
    labelled, unlabelled = data.extra["labelled"], data.extra["unlabelled"]
    assert not set(labelled.tolist()) & set(unlabelled.tolist())
    assert labelled.numel() == 50 and unlabelled.numel() == 300
    full, _ = datasets.load("digits", "train", return_labels=True)
    n = data.train.shape[0]
    assert torch.equal(full[:n], data.train) and n + datasets.load("digits", "valid").shape[0] == full.shape[0]
    trained = data.train[torch.cat([labelled, unlabelled])].flatten(1)
    valid = datasets.load("digits", "valid").flatten(1)
    assert not (torch.cdist(valid, trained) == 0).any()


def test_the_best_validation_model_is_kept_and_reported(tmp_path):
    run = train_run({**TINY, "epochs": 4}, tmp_path / "r", progress=False, say=_quiet)
    history, m = run.history, run.test_metrics
    accuracies = [h["val_accuracy"] for h in history]
    best_epoch = 1 + accuracies.index(max(accuracies))
    assert m["best_epoch"] == best_epoch and m["best_val_accuracy"] == max(accuracies)
    assert [h["best_epoch"] for h in history][-1] == best_epoch
    best = pyro_vae.load(tmp_path / "r" / "best")
    x, y = pyro_vae.runs.run_test_data(json.loads((tmp_path / "r" / "config.json").read_text()), labels=True)
    assert best.accuracy(x, y) == m["best_accuracy"] and run.model.accuracy(x, y) == m["accuracy"]
    seed = json.loads((tmp_path / "r" / "config.json").read_text())["training"]["seed"]
    assert m["model_accuracy"] == model_accuracy(run.model.eval(), x, y, seed=seed)
    assert m["best_model_accuracy"] == model_accuracy(best.eval(), x, y, seed=seed)
    x_valid, y_valid = pyro_vae.datasets.load("digits", "valid", return_labels=True)
    x_valid = pyro_vae.datasets.binarize(x_valid, torch.Generator().manual_seed(0))
    assert best.accuracy(x_valid, y_valid) == max(accuracies)  # the model of that epoch, not the last one


def test_model_accuracy_is_the_argmax_of_the_exact_log_joint():
    """A model whose decoder reads the label only and whose q(z | x, y) is the prior: every importance weight is
    log p(x, y) exactly, so model_accuracy is the accuracy of argmax_y log p(x | y) computed from the decoder."""
    torch.manual_seed(0)
    model = SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,)).double().eval()
    with torch.no_grad():
        model.encoder_z[-1].weight.zero_(), model.encoder_z[-1].bias.zero_()  # loc 0, log scale 0: q(z|x,y) = p(z)
        model.decoder[0].weight[:, :2].zero_()  # the columns of z: the decoder reads y alone
    x = torch.rand(40, 1, 4, 4, dtype=torch.float64).round()
    y = torch.arange(40) % 3
    with torch.no_grad():
        logits = model.decoder(torch.cat([torch.zeros(3, 2), torch.eye(3)], -1).double())  # (3, 16)
        exact = torch.distributions.Bernoulli(logits=logits).log_prob(x.flatten(1).unsqueeze(1)).sum(-1)  # (40, 3)
    expected = float((exact.argmax(-1) == y).double().mean())
    assert 0 < expected < 1
    assert model_accuracy(model, x, y, num_particles=3) == expected


def test_a_best_epoch_that_is_the_last_is_not_scored_twice(tmp_path, monkeypatch):
    """One epoch: the best-validation model is the last one, and its test accuracies are the last's, computed once."""
    import pyro_vae.pipeline.kinds.semi_supervised as kind

    calls = []
    monkeypatch.setattr(kind, "model_accuracy", lambda *a, **k: calls.append(1) or 0.5)
    m = train_run({**TINY, "epochs": 1}, tmp_path / "r", progress=False, say=_quiet).test_metrics
    assert m["best_epoch"] == 1 and len(calls) == 1
    assert m["best_model_accuracy"] == m["model_accuracy"] and m["best_accuracy"] == m["accuracy"]


def test_model_accuracy_scores_every_label_with_the_same_draws():
    """Labels the model cannot tell apart (the label's weights equal in q(z | x, y) and p(x | y, z)) get equal
    estimates only when every label's IWAE uses the same draws: argmax_y is then the first label for every datapoint
    (all labelled 0: accuracy 1), however noisy each estimate is (K = 2, z read by the decoder)."""
    torch.manual_seed(0)
    model = SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,)).double().eval()
    with torch.no_grad():
        for net, width in ((model.encoder_z, 16), (model.decoder, 2)):
            net[0].weight[:, width:] = net[0].weight[:, width:width + 1]  # one column for every label
    x = torch.rand(60, 1, 4, 4, dtype=torch.float64).round()
    assert model_accuracy(model, x, torch.zeros(60, dtype=torch.long), num_particles=2, seed=3) == 1.0


def test_fit_semi_supervised_keeps_the_model_of_the_first_best_epoch(tmp_path, monkeypatch):
    """Scripted validation accuracies 0.2, 0.6, 0.4, 0.6, 0.3: the best epoch is 2 (the first of ties), and best/
    holds the weights of the end of epoch 2, not those of a later epoch."""
    scores = iter([0.2, 0.6, 0.4, 0.6, 0.3])
    monkeypatch.setattr(SSVAE, "accuracy", lambda self, x, y: next(scores))
    weights = []
    ssvae, history = _fit(best_dir=tmp_path / "best", epochs=5, on_epoch_end=lambda r: weights.append(
        {k: v.clone() for k, v in ssvae_ref[0].state_dict().items()}))
    assert [h["best_epoch"] for h in history] == [1, 2, 2, 2, 2]
    best = pyro_vae.load(tmp_path / "best")
    for name, value in best.state_dict().items():
        assert torch.equal(value, weights[1][name]), name
    assert not all(torch.equal(v, weights[3][k]) for k, v in best.state_dict().items())
    with pytest.raises(ValueError, match="best_dir .* needs val_data"):
        fit_semi_supervised(_small(), _data(3), torch.tensor([0, 1, 2]), _data(6), epochs=1, best_dir=tmp_path / "b")


# ------------------------------------------------------------------------------------------------ the options
def test_a_separate_auxiliary_step_is_a_second_adam_update_on_every_batch(tmp_path):
    joint, _ = _fit(tmp_path / "joint")
    separate, _ = _fit(tmp_path / "separate", aux_step="separate")
    batches = 2 * (1 + 2)  # 2 epochs of 1 labelled and 2 unlabelled batches
    steps = {name: load_checkpoint(tmp_path / name / "checkpoint.pt")["optimizer"]["state"][0]["step"]
             for name in ("joint", "separate")}
    assert float(steps["joint"]) == batches and float(steps["separate"]) == 2 * batches
    assert not _same(joint, separate)
    with pytest.raises(ValueError, match="aux_step must be one of joint, separate"):
        _fit(aux_step="both")


def test_the_loss_scale_changes_how_labelled_and_unlabelled_steps_weigh():
    """Labelled batches of 3 against unlabelled ones of 6: summed, a step's gradient grows with its batch, so Adam's
    moments weigh the steps otherwise than per datapoint (with one batch size the two would nearly agree)."""
    mean, _ = _fit(loss_scale="mean")
    summed, _ = _fit(loss_scale="sum")
    assert not _same(mean, summed)
    with pytest.raises(ValueError, match="loss_scale must be one of mean, sum"):
        _fit(loss_scale="total")


@pytest.mark.parametrize("passes", [1, 3])
def test_a_mixed_schedule_joins_every_unlabelled_batch_with_its_share_of_the_labels(passes):
    """Kingma et al.'s mixed minibatches: one step per unlabelled batch, the epoch's labelled passes cut into as many
    shares, every labelled datapoint `passes` times; interleaved: labelled batches as steps of their own."""
    from pyro_vae.train.semi_supervised import _epoch_schedule

    torch.manual_seed(0)
    mixed = _epoch_schedule(50, 7, 10, passes, "mixed")
    assert len(mixed) == 5 and all(step[0][0] == "unlabelled" and step[0][1].numel() == 10 for step in mixed)
    labels = torch.cat([idx for step in mixed for kind, idx in step if kind == "labelled"])
    assert torch.equal(labels.bincount(minlength=7), torch.full((7,), passes))
    assert all(len(step) == 2 for step in mixed)  # 7 * passes >= 5: every step has labels
    interleaved = _epoch_schedule(50, 7, 10, passes, "interleaved")
    assert len(interleaved) == 5 + passes and all(len(step) == 1 for step in interleaved)
    labels = torch.cat([idx for step in interleaved for kind, idx in step if kind == "labelled"])
    assert torch.equal(labels.bincount(minlength=7), torch.full((7,), passes))
    with pytest.raises(ValueError, match="labelled_schedule must be one of interleaved, mixed"):
        _fit(labelled_schedule="joined")


def test_init_hidden_normal_draws_the_hidden_layers_and_keeps_the_output_layers():
    ssvae = init_hidden_normal_(_small(), 0.001)
    for net in (ssvae.encoder_y, ssvae.encoder_z, ssvae.decoder):
        hidden, output = net[0], net[-1]
        assert hidden.weight.abs().max() < 0.01 and hidden.bias.abs().max() == 0
        assert output.weight.abs().max() > 0.05  # torch's initialisation
    with pytest.raises(ValueError, match="init_std must be a number > 0"):
        init_hidden_normal_(_small(), 0)


def test_the_run_options_reach_the_trainer(tmp_path):
    """--aux-step, --loss-scale, --adam-beta1 and --init-std of a run: written to config.json, and each reaches the
    step (Adam's betas and step count in the checkpoint, the first weights)."""
    options = {**TINY, "epochs": 1, "aux_step": "separate", "loss_scale": "sum", "adam_beta1": 0.5, "init_std": 0.002}
    run = train_run(options, tmp_path / "r", progress=False, say=_quiet)
    training = json.loads((tmp_path / "r" / "config.json").read_text())["training"]
    assert {k: training[k] for k in ("aux_step", "loss_scale", "adam_beta1", "init_std")} == \
        {"aux_step": "separate", "loss_scale": "sum", "adam_beta1": 0.5, "init_std": 0.002}
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["optimizer"]
    assert state["param_groups"][0]["betas"][0] == 0.5
    unlabelled_batches, labelled_batches = 2, 10  # 300 in batches of 200, 50 in one for each of 10 passes
    assert float(state["state"][0]["step"]) == 2 * (unlabelled_batches + labelled_batches)
    # the initialisation: the same seed without --init-std starts elsewhere
    s, out = run_settings({**options, "init_std": 0.002}, tmp_path / "x")
    s, data = SemiSupervisedKind().read_data(s, out, False)
    torch.manual_seed(0)
    model = SemiSupervisedKind().build(s, data, out)
    assert model.decoder[0].weight.std() < 0.004
    assert run.test_metrics["epochs"] == 1


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    return train_run({**TINY, "epochs": 1}, tmp_path_factory.mktemp("base") / "r", progress=False, say=_quiet)


@pytest.mark.parametrize("option", [{"aux_step": "separate"}, {"loss_scale": "sum"}, {"adam_beta1": 0.5},
                                    {"init_std": 0.01}, {"binarize": "no"}, {"labelled_passes": 2},
                                    {"labelled_schedule": "mixed"}])
def test_each_run_option_changes_the_training(tmp_path, base_run, option):
    """The same seed and data with one option changed trains other weights (an option dropped on its way to the
    step would leave them equal)."""
    run = train_run({**TINY, "epochs": 1, **option}, tmp_path / "r", progress=False, say=_quiet)
    assert not _same(run.model, base_run.model)


def test_grey_targets_train_on_the_grey_levels(tmp_path):
    run = train_run({**TINY, "epochs": 1, "binarize": "no"}, tmp_path / "r", progress=False, say=_quiet)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["training"]["binarize"] is False
    assert run.test_metrics["epochs"] == 1


@pytest.mark.parametrize("bad, message", [
    ({"aux_step": "both"}, "--aux-step must be one of joint, separate"),
    ({"loss_scale": "total"}, "--loss-scale must be one of mean, sum"),
    ({"adam_beta1": 1.0}, "--adam-beta1 must be in [0, 1)"),
    ({"init_std": -1.0}, "--init-std must be > 0"),
])
def test_bad_options_are_refused_before_anything_is_written(tmp_path, bad, message):
    with pytest.raises(ValueError) as info:
        train_run({**TINY, **bad}, tmp_path / "r", progress=False, say=_quiet)
    assert message in str(info.value) and not (tmp_path / "r").exists()


def test_the_options_belong_to_semi_supervised_runs():
    with pytest.raises(ValueError, match="--aux-step applies to semi-supervised runs"):
        run_settings({"dataset": "digits", "aux_step": "separate"}, "x")
    assert RunSettings().aux_step is None  # a field of every run, set by the semi-supervised kind


# ------------------------------------------------------------------------------------------------ resuming
def test_a_resumed_run_with_the_options_equals_one_never_stopped(tmp_path):
    options = {**TINY, "aux_step": "separate", "loss_scale": "sum", "adam_beta1": 0.8, "init_std": 0.01}
    straight = train_run({**options, "epochs": 3}, tmp_path / "a", progress=False, say=_quiet)
    train_run({**options, "epochs": 1}, tmp_path / "b", progress=False, say=_quiet)
    resumed = train_run({"epochs": 3}, tmp_path / "b", resume=True, progress=False, say=_quiet)
    assert _same(straight.model, resumed.model)
    assert straight.test_metrics["best_epoch"] == resumed.test_metrics["best_epoch"]
    assert straight.test_metrics["best_accuracy"] == resumed.test_metrics["best_accuracy"]
    with pytest.raises(ValueError, match="--aux-step joint differs from the run's 'separate'"):
        train_run({"epochs": 4, "aux_step": "joint"}, tmp_path / "b", resume=True, progress=False, say=_quiet)
    with pytest.raises(ValueError, match="--adam-beta1 0.9 differs from the run's 0.8"):
        train_run({"epochs": 4, "adam_beta1": 0.9}, tmp_path / "b", resume=True, progress=False, say=_quiet)


def test_a_checkpoint_written_before_the_options_resumes_with_its_schedule(tmp_path):
    """A checkpoint of fit_semi_supervised without aux_step/loss_scale in its config trained joint and per
    datapoint: it resumes so, and refuses another schedule."""
    folder = tmp_path / "c"
    _fit(folder, epochs=1)
    path = folder / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    config = json.loads(state["config"])
    for key in ("aux_step", "loss_scale"):
        config.pop(key)
    state["config"] = json.dumps(config)
    torch.save(state, path)
    resumed, _ = _fit(folder, epochs=2, resume=True)
    straight, _ = _fit(epochs=2)  # joint steps, loss per datapoint, never stopped
    assert _same(resumed, straight)
    with pytest.raises(ValueError, match="aux_step joint -> separate"):
        _fit(folder, epochs=3, resume=True, aux_step="separate")
    with pytest.raises(ValueError, match="loss_scale mean -> sum"):
        _fit(folder, epochs=3, resume=True, loss_scale="sum")


def test_the_table_runner_skips_finished_cells(tmp_path, capsys, benchmark_module):
    """benchmarks/ss_table.py: a second call skips the finished cells and gives the same table."""
    module = benchmark_module("ss_table")
    argv = ["--smoke-test", "--root", str(tmp_path)]
    first = module.main(module.parser().parse_args(argv))
    second = module.main(module.parser().parse_args(argv))
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 2 and out.count("started") == 2
    assert [[r["accuracy"] for r in runs] for runs in first.values()] == \
        [[r["accuracy"] for r in runs] for runs in second.values()]


#: a stand-in for Pyro's examples/vae: what benchmarks/pyro_ss_m2.py imports and calls of ss_vae_M2.py, writing the
#: log lines Pyro's main writes (the accuracies from the loaders it was given, so the glue is checked end to end)
_PYRO_STAND_IN = '''
from utils.custom_mlp import MLP, Exp
from utils.mnist_cached import MNISTCached, mkdir_p, setup_data_loaders
from utils.vae_plots import mnist_test_tsne_ssvae, plot_conditional_samples_ssvae
from visdom import Visdom
from pyro.contrib.examples.util import print_and_log


def main(args):
    import pyro
    import torch

    # Pyro's main registers its networks in the global param store: a cell must start with an empty one
    assert not list(pyro.get_param_store().keys()), "a parameter of the previous cell is still in the store"
    pyro.param("ss_vae$$$w", torch.zeros(1))
    loaders = setup_data_loaders(MNISTCached, args.cuda, args.batch_size, sup_num=args.sup_num)
    sizes = {k: sum(x.shape[0] for x, _ in v) for k, v in loaders.items()}
    logger = open(args.logfile, "w")
    best = (0.0, 0.0)
    for i in range(args.num_epochs):
        valid, test = (i + 1) / 100 + sizes["unsup"] / 1e6, sizes["test"] / 1e6 + args.seed / 10
        if valid > best[0]:
            best = (valid, test)
        print_and_log(logger, f"{i} epoch: avg losses 1.0 2.0 3.0 0.0 validation accuracy {valid} test accuracy {test}")
    print_and_log(logger, f"best validation accuracy {best[0]} corresponding testing accuracy {best[1]} "
                          f"last testing accuracy {test}")
    logger.close()
'''


def test_pyro_side_by_side_gets_the_runs_split(benchmark_module):
    """benchmarks/pyro_ss_m2.py hands Pyro's program the split of a pyro-vae run of the same seed: the same labelled
    images with their labels, the same unlabelled ones, the validation split apart, grey levels, one-hot labels."""
    script = benchmark_module("pyro_ss_m2")
    split = script.pyro_split(50, 3, 300, None, dataset="digits")
    s, _ = run_settings({**TINY, "seed": 3, "binarize": "no"}, "unused")
    s, data = SemiSupervisedKind().read_data(s, Path("unused"), False)
    lab, unlab = data.extra["labelled"], data.extra["unlabelled"]
    x_sup, y_sup = split["sup"]
    assert torch.equal(x_sup, data.train[lab].reshape(50, -1))
    assert torch.equal(y_sup.argmax(1), data.labels["train"][lab]) and torch.equal(y_sup.sum(1), torch.ones(50))
    assert torch.bincount(y_sup.argmax(1), minlength=10).tolist() == [5] * 10
    assert torch.equal(split["unsup"][0], data.train[unlab].reshape(300, -1))
    assert torch.equal(split["valid"][0], data.valid.reshape(data.valid.shape[0], -1))
    assert torch.equal(split["test"][1].argmax(1), data.labels["test"])
    assert 0 <= float(split["unsup"][0].min()) and float(split["unsup"][0].max()) <= 1
    assert not (((split["unsup"][0] == 0) | (split["unsup"][0] == 1)).all())  # grey levels, as Pyro's loader
    other = script.pyro_split(50, 4, 300, None, dataset="digits")  # another seed, another split
    assert not torch.equal(other["sup"][0], x_sup)


def test_pyro_side_by_side_runs_the_program_and_skips_finished_cells(tmp_path, capsys, benchmark_module):
    """The program is read from the folder given, its data loading replaced by the run's split, its log parsed into
    result.json (last, best-validation test accuracy and epoch); a finished cell is skipped; a folder without the
    program is refused naming it."""
    examples = tmp_path / "examples" / "vae"
    (examples / "utils").mkdir(parents=True)
    (examples / "utils" / "__init__.py").write_text("")
    (examples / "utils" / "custom_mlp.py").write_text("MLP = Exp = object\n")
    (examples / "ss_vae_M2.py").write_text(_PYRO_STAND_IN)
    script = benchmark_module("pyro_ss_m2")
    argv = ["--pyro-examples", str(examples), "--dataset", "digits", "--labels", "50", "--seeds", "0,1",
            "--epochs", "3", "--num-unlabelled", "300", "--root", str(tmp_path / "cells")]
    rows = script.main(script.parser().parse_args(argv))
    result = json.loads((tmp_path / "cells" / "labels50-seed1" / "result.json").read_text())
    assert result["num_unlabelled"] == 300 and result["best_epoch"] == 3 and len(result["history"]) == 3
    assert result["best_val_accuracy"] == pytest.approx(0.03 + 300 / 1e6)
    assert result["accuracy"] == result["best_accuracy"] == pytest.approx(script.pyro_split(
        50, 1, 300, None, "digits")["test"][0].shape[0] / 1e6 + 0.1)
    assert rows[0][:3] == [50, "Pyro's ss_vae_M2.py (its example run's settings)", 2]
    again = script.main(script.parser().parse_args(argv))
    assert again == rows and capsys.readouterr().out.count("finished, skipped") == 2
    (examples / "ss_vae_M2.py").unlink()
    with pytest.raises(SystemExit, match="no ss_vae_M2.py"):
        script.main(script.parser().parse_args(argv[:-2] + ["--root", str(tmp_path / "other")]))


def test_the_table_runner_extends_a_cell_to_a_larger_budget(tmp_path, capsys, benchmark_module, monkeypatch):
    """benchmarks/ss_table.py: a finished cell asked for more epochs is resumed to them (its first epochs kept),
    then skipped at that budget."""
    import argparse

    import pyro_vae.pipeline.kinds.semi_supervised as kind

    # the model's accuracy as a fingerprint of the test data it is given: the table's backfill must score the run's
    # own test data (its seed's binarization), as the run did
    monkeypatch.setattr(kind, "model_accuracy", lambda model, x, y, **k: float(x.double().sum()))

    module = benchmark_module("ss_table")
    module.BASE.update(dataset="digits", hidden_dims="32", latent_dim=4)
    args = argparse.Namespace(epochs=1, num_unlabelled=200, test_particles=2, data_root=None, device="cpu",
                              only_finished=False)
    module.run_cell(tmp_path, 20, 1, "defaults", {}, args)
    cell = tmp_path / "labels20-defaults-seed1"
    first = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    args.epochs = 2
    module.run_cell(tmp_path, 20, 1, "defaults", {}, args)
    module.run_cell(tmp_path, 20, 1, "defaults", {}, args)
    out = capsys.readouterr().out
    assert [line.split(":")[1].split()[0] for line in out.splitlines()] == ["started", "extended", "finished,"]
    assert json.loads((cell / "config.json").read_text())["training"]["epochs"] == 2
    after = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in after] == [1, 2] and after[0] == first[0]
    # an extension stopped after the run rewrote its configuration (to 3 epochs) but before it finished: the test
    # metrics are still the 2-epoch run's, and the cell is not finished at 3
    config = json.loads((cell / "config.json").read_text())
    config["training"]["epochs"] = 3
    (cell / "config.json").write_text(json.dumps(config))
    args.epochs = 3
    module.run_cell(tmp_path, 20, 1, "defaults", {}, args)
    assert capsys.readouterr().out.split(":")[1].split()[0] == "extended"
    assert json.loads((cell / "test_metrics.json").read_text())["epochs"] == 3
    # a cell finished before the generative model's accuracy existed gets it, as the run computes it
    metrics = json.loads((cell / "test_metrics.json").read_text())
    (cell / "test_metrics.json").write_text(json.dumps(
        {k: v for k, v in metrics.items() if k not in ("model_accuracy", "best_model_accuracy")}))
    again = module.run_cell(tmp_path, 20, 1, "defaults", {}, args)
    assert "accuracy added" in capsys.readouterr().out
    assert json.loads((cell / "test_metrics.json").read_text()) == metrics
    assert again["model_accuracy"] == metrics["model_accuracy"] and "best_model_accuracy" in again


@pytest.mark.parametrize("aux_step", ["joint", "separate"])
def test_the_auxiliary_loss_is_computed_once_per_labelled_batch(monkeypatch, aux_step):
    """The classifier's loss runs once per labelled batch and step: in the joint update, or (separate) after the
    bound's update only, never also beside the bound where it would be thrown away."""
    calls = []
    original = SSVAE.aux_loss

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SSVAE, "aux_loss", counted)
    _fit(epochs=1, aux_step=aux_step)
    # 3 labelled datapoints in batches of 6: one labelled batch an epoch (one pass), validation does not call it
    assert len(calls) == 1
