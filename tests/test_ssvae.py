"""The semi-supervised VAE (M2): the label summed exactly, Pyro's TraceEnum_ELBO for the same draws, the auxiliary
loss, training on labelled and unlabelled data, log p(x) with the label summed."""

import math
import warnings

import pyro
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import pyro_vae
from pyro_vae import SSVAE, datasets, fit_semi_supervised, infer
from pyro_vae.infer.objectives import objective_loss


def _small(dtype=torch.float64):
    torch.manual_seed(0)
    return SSVAE((1, 4, 4), num_classes=3, latent_dim=2, hidden_dims=(8,)).to(dtype)


def _data(n=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=dtype).round()


def test_public_names():
    assert pyro_vae.SSVAE is SSVAE and pyro_vae.fit_semi_supervised is fit_semi_supervised


def test_elbo_and_gradients_equal_trace_enum_elbo():
    """Unlabelled (y enumerated) and labelled batches: loss and every gradient equal Pyro's TraceEnum_ELBO for the
    same draws (same seed, one particle)."""
    ssvae = _small()
    x, y = _data(), torch.tensor([0, 2, 1, 1, 0])
    params = list(ssvae.parameters())
    for args in ((x,), (x, y)):
        out = []
        for which in ("ours", "pyro"):
            pyro.set_rng_seed(7)
            if which == "ours":
                loss = objective_loss("elbo", ssvae.model, ssvae.guide, *args, num_particles=1, max_plate_nesting=1)
            else:
                with warnings.catch_warnings():  # (a labelled batch enumerates nothing: Pyro says so)
                    warnings.simplefilter("ignore", UserWarning)
                    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
                        ssvae.model, ssvae.guide, *args)
            out.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
        assert_close(out[0][0], out[1][0])
        for a, b in zip(out[0][1], out[1][1]):
            if a is None or b is None:
                assert a is None and b is None  # (q(y|x) has no part in a labelled batch's ELBO)
            else:
                assert_close(a, b)


def test_label_summed_is_the_mixture_of_labelled_bounds():
    """log p(x) = logsumexp_y log p(x, y): the enumerated IWAE with many particles agrees with the logsumexp over
    classes of the labelled IWAE estimates (to 0.1 nats: both keep a small bias at K = 4000; keeping q(y|x) in the
    weight would move it by about log 3); and the enumerated ELBO is sum_y q(y|x) [ELBO(x, y) - log q(y|x)]."""
    ssvae = _small()
    x = _data(4)
    k = 4000
    with torch.no_grad():
        summed = infer.iwae_bound(ssvae.model, ssvae.guide, x, num_particles=k)
        per_class = torch.stack([infer.iwae_bound(ssvae.model, ssvae.guide, x, torch.full((4,), c), num_particles=k)
                                 for c in range(3)])
        assert_close(summed, torch.logsumexp(per_class, 0), atol=0.1, rtol=0)
        def elbo(*y):  # the mean of the ELBO's integrand over k particles, and its standard error
            v = infer.importance_terms(ssvae.model, ssvae.guide, x, *y, num_particles=k).elbo_integrand
            return v.mean(0), v.std(0) / math.sqrt(k)

        enum, enum_se = elbo()
        log_q = torch.log_softmax(ssvae.y_logits(x), -1).T  # (C, N)
        labelled = [elbo(torch.full((4,), c)) for c in range(3)]
        mix = sum(log_q[c].exp() * (labelled[c][0] - log_q[c]) for c in range(3))
        mix_se = sum((log_q[c].exp() * labelled[c][1]) ** 2 for c in range(3)).sqrt()
        assert bool(((enum - mix).abs() < 4 * (enum_se**2 + mix_se**2).sqrt()).all())
        assert_close(enum, infer.elbo(ssvae.model, ssvae.guide, x, num_particles=k), atol=0.2, rtol=0)
        assert bool((enum <= summed + 4 * enum_se).all())


def test_aux_loss_and_accuracy():
    ssvae = _small()
    x, y = _data(6), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = -46.0 * torch.log_softmax(ssvae.y_logits(x), -1)[torch.arange(6), y].sum()
    assert_close(ssvae.aux_loss(x, y), expected)
    pred = ssvae.classify(x)
    assert ssvae.accuracy(x, y, batch_size=4) == pytest.approx(float((pred == y).double().mean()))


def test_one_hot_and_index_labels_agree():
    ssvae = _small()
    x, y = _data(3), torch.tensor([2, 0, 1])
    pyro.set_rng_seed(1)
    a = infer.elbo(ssvae.model, ssvae.guide, x, y, num_particles=2)
    pyro.set_rng_seed(1)
    b = infer.elbo(ssvae.model, ssvae.guide, x, F.one_hot(y, 3).double(), num_particles=2)
    assert_close(a, b)


@pytest.mark.slow
def test_fit_semi_supervised_learns_the_classes():
    """On scikit-learn's digits with 200 labels, a few epochs take the classifier well above chance (0.1; the
    test set's standard error of an accuracy is below 0.03) and lower the unlabelled loss."""
    pyro.set_rng_seed(0)
    x, y = datasets.load("digits", "train", return_labels=True)
    x_test, y_test = datasets.load("digits", "test", return_labels=True)
    ssvae = SSVAE(x.shape[1:], latent_dim=8, hidden_dims=(64,))
    history = fit_semi_supervised(ssvae, x[:200], y[:200], x[200:], epochs=6, batch_size=100, lr=3e-3,
                                  binarize=True, val_data=(x_test, y_test), seed=0, progress=False)
    assert len(history) == 6 and {"loss_unlabelled", "loss_labelled", "aux_loss", "val_accuracy"} <= set(history[0])
    assert history[-1]["loss_unlabelled"] < history[0]["loss_unlabelled"]
    assert history[-1]["val_accuracy"] > 0.1 + 4 * math.sqrt(0.09 / x_test.shape[0])
    test = datasets.binarize(x_test[:50], torch.Generator().manual_seed(0))
    res = infer.log_likelihood(ssvae.model, ssvae.guide, test, num_particles=20, progress=False, seed=0)
    assert bool(torch.isfinite(res.values).all()) and bool((res.elbo <= res.values + 1e-6).all())


def test_refuses_mismatched_labels():
    ssvae = _small(torch.float32)
    with pytest.raises(ValueError, match="labels"):
        fit_semi_supervised(ssvae, torch.zeros(3, 1, 4, 4), torch.zeros(2), torch.zeros(5, 1, 4, 4), epochs=1)
    with pytest.raises(ValueError, match="labelled_passes"):
        fit_semi_supervised(ssvae, torch.zeros(3, 1, 4, 4), torch.zeros(3), torch.zeros(5, 1, 4, 4), epochs=1,
                            labelled_passes=0)


def test_labelled_passes_visit_the_labels_more_often():
    """labelled_passes=3: three labelled batches an epoch (each labelled datapoint three times), counted in the
    per-visit losses; the steps change the classifier."""
    ssvae = _small(torch.float32)
    x, y = _data(6, torch.float32), torch.tensor([0, 1, 2, 0, 1, 2])
    calls = []
    original = ssvae.aux_loss
    ssvae.aux_loss = lambda x, y: calls.append(x.shape[0]) or original(x, y)
    before = ssvae.y_logits(x).detach().clone()
    history = fit_semi_supervised(ssvae, x, y, _data(8, torch.float32, seed=1), epochs=1, batch_size=4,
                                  labelled_passes=3, progress=False, seed=0)
    assert sum(calls) == 18 and len(calls) == 6  # 3 passes of 6 labelled datapoints in batches of 4 and 2
    assert math.isfinite(history[0]["aux_loss"]) and not torch.equal(before, ssvae.y_logits(x).detach())


def _fit_small(epochs, folder=None, resume=False, lr=3e-3, unlabelled=None):
    """A small M2 (float32) trained on fixed data with dynamic binarization, from the same initial weights."""
    ssvae = _small(torch.float32)
    x, y = _data(6, torch.float32), torch.tensor([0, 1, 2, 0, 1, 2])
    u = _data(10, torch.float32, seed=1) if unlabelled is None else unlabelled
    history = fit_semi_supervised(ssvae, x, y, u, epochs=epochs, batch_size=4, lr=lr, binarize=True,
                                  val_data=(x, y), seed=0, progress=False, checkpoint_dir=folder, resume=resume)
    return ssvae, history


def _same_records(a, b):
    drop = ("seconds",)
    return [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]


def test_fit_semi_supervised_resumes_to_the_weights_of_a_run_never_stopped(tmp_path):
    """3 epochs straight, and 1 epoch then a resume to 3 from the checkpoint: the same weights, Adam state and
    per-epoch losses (every generator is in the checkpoint: the permutations and the binarizations continue); the
    checkpoint and metrics.jsonl hold the epochs done."""
    straight, history = _fit_small(3)
    _fit_small(1, tmp_path)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    resumed, resumed_history = _fit_small(3, tmp_path, resume=True)
    assert len(resumed_history) == 3 and _same_records(resumed_history, history)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    state = pyro_vae.train.state.load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 3 and state["trainer"] == "fit_semi_supervised"
    # asked for no more epochs than it has, resume trains none
    _, again = _fit_small(3, tmp_path, resume=True)
    assert _same_records(again, history)
    # a stopped run's loss changes with the data, so other data are refused before any step
    with pytest.raises(ValueError, match="unlabelled 10 -> 12"):
        _fit_small(4, tmp_path, resume=True, unlabelled=_data(12, torch.float32, seed=1))
    with pytest.raises(ValueError, match="resume=True needs the checkpoint_dir"):
        _fit_small(1, resume=True)


def test_fit_semi_supervised_refuses_a_checkpoint_of_fit(tmp_path):
    vae = pyro_vae.VAE((1, 4, 4), latent_dim=2, hidden_dims=(8,))
    pyro_vae.fit(vae, _data(8, torch.float32), epochs=1, batch_size=4, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint of pyro_vae.fit, not of fit_semi_supervised"):
        _fit_small(2, tmp_path, resume=True)


def test_example_smoke_test(data_root, tmp_path):
    """examples/ss_vae.py --smoke-test runs on MNIST and reports the accuracy and log p(x) with the label summed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYRO_VAE_DATA=str(data_root), MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, str(repo / "examples" / "ss_vae.py"), "--smoke-test"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "label summed" in proc.stdout


def test_an_ssvae_saves_and_loads_as_every_model_class(tmp_path):
    import pyro_vae

    ssvae = SSVAE((1, 8, 8), num_classes=3, latent_dim=2, hidden_dims=(16,))
    folder = ssvae.save(tmp_path / "m")
    again = pyro_vae.load(folder)
    x = torch.rand(4, 1, 8, 8)
    assert type(again) is SSVAE and again.config == ssvae.config
    torch.testing.assert_close(again.y_logits(x), ssvae.y_logits(x))


def test_iwae_dreg_with_the_label_summed():
    """objective 'iwae-dreg' on an unlabelled batch (the one-hot label enumerated): the value of 'iwae' and the same
    decoder gradient for the same draws, another encoder gradient (the score term replaced), none for q(y|x) (it left
    the weights); a labelled batch trains too; fit_semi_supervised takes the objective."""
    ssvae = _small()
    x = _data()
    groups = {"decoder": list(ssvae.decoder.parameters()), "encoder_z": list(ssvae.encoder_z.parameters()),
              "encoder_y": list(ssvae.encoder_y.parameters())}
    out = {}
    for objective in ("iwae", "iwae-dreg"):
        pyro.set_rng_seed(3)
        loss = objective_loss(objective, ssvae.model, ssvae.guide, x, num_particles=4, max_plate_nesting=1)
        grads = torch.autograd.grad(loss, [p for ps in groups.values() for p in ps], allow_unused=True)
        it = iter(grads)
        out[objective] = (loss, {name: [next(it) for _ in ps] for name, ps in groups.items()})
    assert_close(out["iwae-dreg"][0], out["iwae"][0])
    for a, b in zip(out["iwae"][1]["decoder"], out["iwae-dreg"][1]["decoder"]):
        assert_close(a, b)
    diff = sum(float((a - b).abs().sum())
               for a, b in zip(out["iwae"][1]["encoder_z"], out["iwae-dreg"][1]["encoder_z"]))
    assert diff > 1e-6
    assert all(g is None or float(g.abs().max()) == 0.0 for _, gs in out.values() for g in gs["encoder_y"])
    labelled = objective_loss("iwae-dreg", ssvae.model, ssvae.guide, x, torch.tensor([0, 1, 2, 0, 1]), num_particles=3,
                              max_plate_nesting=1)
    assert torch.isfinite(labelled)
    history = fit_semi_supervised(ssvae, x[:3], torch.tensor([0, 1, 2]), x, epochs=1, batch_size=2,
                                  objective="iwae-dreg", num_particles=3, progress=False, seed=0)
    assert len(history) == 1 and math.isfinite(history[0]["loss_unlabelled"])


def _joined_reference(net, a, b):
    """``net([a, b])`` on the joined input, built as it reads."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return net(torch.cat([a.expand(*shape, a.shape[-1]), b.expand(*shape, b.shape[-1])], -1))


def test_split_first_layer_equals_the_joined_input():
    """``_on_joined`` gives the values and gradients of the network on the joined input, for the enumeration's
    broadcast shapes (labels ``(C, 1, C)`` against data ``(N, D)``) and for equal ones; swapping the inputs changes
    the result (the weights' columns are not shared)."""
    from pyro_vae.models.semi_supervised import _on_joined

    torch.manual_seed(0)
    net = pyro_vae.nets.mlp([6 + 3, 5, 4], "softplus").double()
    a = torch.randn(7, 6, dtype=torch.float64)
    b = F.one_hot(torch.arange(3), 3).double().unsqueeze(-2)  # (3, 1, 3), as Pyro's enumeration shapes y
    for x, y in ((a, b), (a[:3], torch.randn(3, 3, dtype=torch.float64))):
        ours, reference = _on_joined(net, x, y), _joined_reference(net, x, y)
        assert ours.shape == reference.shape
        assert_close(ours, reference)
        grads = [torch.autograd.grad(out.sum(), list(net.parameters())) for out in (ours, reference)]
        for g, h in zip(*grads):
            assert_close(g, h)
    square = pyro_vae.nets.mlp([3 + 3, 4], "softplus").double()
    c = torch.randn(3, 3, dtype=torch.float64)
    assert not torch.allclose(_on_joined(square, a[:3, :3], c), _on_joined(square, c, a[:3, :3]))


def test_an_unlabelled_step_computes_the_data_layer_once_not_once_per_label(monkeypatch):
    """The first layer of q(z | x, y) multiplies each x by its weights once, not once per enumerated label: an
    unlabelled batch's loss and gradients cost (C - 1) N D H multiply-adds fewer than on the joined input (the same
    loss), measured by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    import pyro_vae.models.semi_supervised as semi_supervised

    torch.manual_seed(0)
    n, d, h, c = 20, 64, 32, 10
    ssvae = SSVAE((1, 8, 8), num_classes=c, latent_dim=4, hidden_dims=(h,))
    x = torch.rand(n, 1, 8, 8).round()

    def measured():
        pyro.set_rng_seed(0)
        with FlopCounterMode(display=False) as counter:
            loss = objective_loss("elbo", ssvae.model, ssvae.guide, x, num_particles=1, max_plate_nesting=1)
            loss.backward()
        return loss.detach(), counter.get_total_flops()

    split_loss, split_flops = measured()
    monkeypatch.setattr(semi_supervised, "_on_joined", _joined_reference)
    joined_loss, joined_flops = measured()
    assert_close(split_loss, joined_loss)
    # forward, and the gradient of the weights: 2 flops a multiply-add each (the input needs no gradient)
    saved = 2 * 2 * (c - 1) * n * d * h
    assert joined_flops - split_flops >= 0.9 * saved, (joined_flops, split_flops, saved)
