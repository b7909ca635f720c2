"""TwoStageVAE (Dai & Wipf) and the Frechet classifier distance."""

import math

import numpy as np
import pytest
import torch

import pyro_vae
from pyro_vae import datasets, infer
from pyro_vae.frechet import (
    FeatureClassifier,
    frechet_classifier_distance,
    frechet_distance,
    load_classifier,
    train_classifier,
)
from pyro_vae.models import TwoStageVAE


def _small(**kw):
    return TwoStageVAE((1, 8, 8), latent_dim=4, hidden_dims=(32,), stage2_hidden_dims=(32,), **kw)


def test_structure_and_sampling_through_both_stages():
    tsv = _small()
    assert tsv.stage1.config["likelihood"] == "normal-gamma"
    assert tsv.stage2.input_shape == (4,) and tsv.stage2.latent_dim == 4
    assert tsv.gamma == pytest.approx(1.0)
    x = datasets.load("digits")[:10]
    # model/guide are stage 1's: the estimators measure log p(x) of the data
    assert infer.log_importance_weights(tsv.model, tsv.guide, x, num_particles=3).shape == (3, 10)
    assert tsv.codes(x).shape == (10, 4)
    assert tsv.sample(5).shape == (5, 1, 8, 8)
    assert tsv.sample(5, stages=1).shape == (5, 1, 8, 8)
    assert tsv.sample(2, mean=False).shape == (2, 1, 8, 8)
    # the two-stage sampler is stage 1's decoder mean at draws z ~ p(z | u) of stage 2 (not at its means)
    torch.manual_seed(0)
    s = tsv.sample(4)
    torch.manual_seed(0)
    z = tsv.stage2.sample(4, mean=False)
    torch.testing.assert_close(s, tsv.stage1.decode(z))
    torch.manual_seed(0)
    assert not torch.allclose(s, tsv.stage1.decode(tsv.stage2.sample(4, mean=True)))
    with pytest.raises(ValueError, match="stages"):
        tsv.sample(2, stages=3)


def test_fit_gamma_falls_and_elbo_rises():
    x = datasets.load("digits", "train")
    xv = datasets.load("digits", "valid")
    tsv = _small()
    seen = []
    hist = tsv.fit(x, epochs=8, stage2_epochs=3, batch_size=100, lr=1e-2, val_data=xv, device="cpu", seed=0,
                   progress=False, on_epoch_end=lambda stage, r: seen.append(stage))
    gammas = [r["gamma"] for r in hist["stage1"]]
    assert len(gammas) == 8 and len(hist["stage2"]) == 3
    assert seen == [1] * 8 + [2] * 3
    assert gammas[-1] < 0.5 * gammas[0]
    assert all(b < a for a, b in zip(gammas, gammas[1:]))
    # a density of continuous data: as gamma falls the ELBO grows (here it passes the fixed-gamma value)
    assert hist["stage1"][-1]["val_elbo"] > hist["stage1"][0]["val_elbo"] + 5
    # stage 2 was trained on stage 1's codes (kappa-dimensional): its validation ELBO of the codes rose
    assert hist["stage2"][-1]["val_elbo"] > hist["stage2"][0]["val_elbo"]


def test_frechet_distance_closed_form():
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]]))
    assert d == pytest.approx(4.0 + 1.0)
    # identical Gaussians: 0; diagonal covariances: sum over dims
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    assert frechet_distance(np.zeros(5), cov, np.zeros(5), cov) == pytest.approx(0.0, abs=1e-6)
    s1, s2 = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    expected = 1.0 + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(np.zeros(3), np.diag(s1), np.ones(3) * np.array([1, 0, 0]), np.diag(s2)) == \
        pytest.approx(expected)


def test_frechet_classifier_distance_orders_samples(tmp_path):
    x, y = datasets.load("digits", "train", return_labels=True)
    xt = datasets.load("digits", "test")
    clf = train_classifier(x, y, epochs=3, batch_size=64, lr=3e-3, path=tmp_path / "clf.pt")
    with torch.no_grad():
        acc = (clf(xt).argmax(1) == datasets.load("digits", "test", return_labels=True)[1]).float().mean()
    assert acc > 0.5
    clf2 = load_classifier(tmp_path / "clf.pt", (1, 8, 8))
    torch.testing.assert_close(clf2.features(xt[:5]), clf.features(xt[:5]))
    assert clf.features(xt[:5]).shape == (5, 128)
    same = frechet_classifier_distance(clf, xt, x[:297])
    noise = frechet_classifier_distance(clf, xt, torch.rand(297, 1, 8, 8))
    blank = frechet_classifier_distance(clf, xt, torch.zeros(297, 1, 8, 8) + xt.mean())
    assert 0 <= same < noise and same < blank


def test_feature_classifier_shapes():
    net = FeatureClassifier((1, 28, 28))
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert net.features(torch.rand(3, 1, 28, 28)).shape == (3, 128)


def test_fit_accepts_two_stage_pair():
    """pyro_vae.fit trains a TwoStageVAE's stage 1 through its model/guide properties."""
    tsv = _small()
    x = datasets.load("digits")[:200]
    before = [p.detach().clone() for p in tsv.stage1.parameters()]
    hist = pyro_vae.fit(tsv.stage1, x, epochs=1, batch_size=50, device="cpu", progress=False)
    assert math.isfinite(hist[0]["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, tsv.stage1.parameters()))  # it trained stage 1


def test_cli_two_stage_and_layers(tmp_path):
    import json

    from pyro_vae.cli import main

    out = tmp_path / "ts"
    assert main(["train", "--two-stage", "--epochs", "2", "--stage2-epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class"] == "TwoStageVAE" and config["vae"]["stage1_likelihood"] == "normal-gamma"
    history = json.loads((out / "history.json").read_text())
    assert len(history["stage1"]) == 2 and len(history["stage2"]) == 1 and "gamma" in history["stage1"][0]
    assert "gamma" in json.loads((out / "test_metrics.json").read_text())
    assert (out / "samples.png").is_file() and (out / "model" / "weights.pt").is_file()
    tsv = TwoStageVAE((1, 8, 8), latent_dim=8, hidden_dims=(128,), stage2_hidden_dims=(128,))
    tsv.load_state_dict(torch.load(out / "model" / "weights.pt", weights_only=True))
    again = pyro_vae.load(out)
    assert isinstance(again, TwoStageVAE)
    for a, b in zip(again.state_dict().values(), tsv.state_dict().values()):
        assert torch.equal(a, b)

    out = tmp_path / "h"
    assert main(["train", "--layers", "32,8;16,4", "--epochs", "1", "--objective", "iwae", "--out", str(out),
                 "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["class"] == "HierarchicalVAE" and config["vae"]["layers"] == [[32, 8], [16, 4]]
    assert config["training"]["num_particles"] == 5
    assert main(["train", "--layers", "32,x", "--epochs", "1", "--out", str(tmp_path / "bad")]) == 2


def test_small_initial_stage2_gamma_avoids_the_collapsed_stationary_point():
    """Started at gamma = 1, stage 2 drifts to 'latent unused, gamma = variance of the codes' and its samples
    shrink to the mean code; the default start (0.01) uses the latent from the first step."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(2000, 4, generator=g) * torch.tensor([1.0, 0.5, 1.2, 0.3]) + torch.tensor([0.5, 0, -1, 0])
    ratios = {}
    for gamma in (1.0, 0.01):
        tsv = TwoStageVAE((1, 8, 8), latent_dim=4, hidden_dims=(16,), stage2_hidden_dims=(64, 64),
                          stage2_gamma=gamma)
        pyro_vae.fit(tsv.stage2, codes, epochs=5, batch_size=100, device="cpu", seed=0, progress=False)
        torch.manual_seed(0)
        ratios[gamma] = (tsv.stage2.sample(2000).var(0) / codes.var(0))[[0, 2]]
    assert TwoStageVAE((1, 8, 8), latent_dim=2, hidden_dims=(8,)).stage2.likelihood.gamma.item() == \
        pytest.approx(0.01)
    assert (ratios[0.01] > 3 * ratios[1.0]).all(), ratios


def test_codes_sample_draws_from_the_posterior():
    tsv = _small()
    x = datasets.load("digits")[:300]
    loc, scale = tsv.posterior(x, batch_size=128)  # batched as one pass would be
    with torch.no_grad():
        loc1, scale1 = tsv.stage1.encode(x)
    torch.testing.assert_close(loc, loc1)
    torch.testing.assert_close(scale, scale1)
    torch.testing.assert_close(tsv.codes(x), loc)
    torch.manual_seed(0)
    draws = torch.stack([tsv.codes(x, sample=True) for _ in range(400)])
    standardized = (draws - loc) / scale  # N(0, 1) per datapoint and dimension if the draws are z ~ q(z | x)
    n = standardized.numel()
    assert abs(float(standardized.mean())) < 5 / math.sqrt(n)
    assert abs(float(standardized.var()) - 1) < 5 * math.sqrt(2 / n)


def test_stage2_trains_on_fresh_posterior_draws_by_default(monkeypatch):
    """Dai & Wipf: stage 2's data are z ~ q(z | x), redrawn at every visit; 'means' keeps the old behaviour."""
    import pyro_vae.train.two_stage as two_stage

    x = datasets.load("digits")[:200]
    calls = []
    real_fit = two_stage.fit

    def spy(pair, data, **kw):
        calls.append((pair, data, kw.get("data_scale"), kw.get("val_data")))
        return real_fit(pair, data, **kw)

    monkeypatch.setattr(two_stage, "fit", spy)
    for codes in ("samples", "means"):
        calls.clear()
        tsv = _small()
        tsv.fit(x, epochs=1, batch_size=50, val_data=x[:40], device="cpu", seed=0, progress=False,
                stage2_codes=codes)
        (_, _, scale1, _), (pair2, data2, scale2, val2) = calls
        loc, scale = tsv.posterior(x)
        assert scale1 is None and pair2 is tsv.stage2
        torch.testing.assert_close(data2, loc)
        if codes == "samples":
            torch.testing.assert_close(scale2, scale)
            assert not torch.allclose(val2, tsv.codes(x[:40]))  # validated on one draw of the codes
        else:
            assert scale2 is None
            torch.testing.assert_close(val2, tsv.codes(x[:40]))
    with pytest.raises(ValueError, match="stage2_codes"):
        _small().fit(x, epochs=1, batch_size=50, device="cpu", progress=False, stage2_codes="modes")


def test_stage2_codes_from_the_command_line_and_a_config_file(tmp_path, capsys):
    import json

    from pyro_vae.cli import main

    for given, expected in (([], "samples"), (["--stage2-codes", "means"], "means")):
        out = tmp_path / expected
        assert main(["train", "--two-stage", "--epochs", "1", "--stage2-epochs", "1", "--out", str(out),
                     "--no-progress", *given]) == 0
        assert json.loads((out / "config.json").read_text())["training"]["stage2_codes"] == expected
    config = tmp_path / "run.yaml"
    config.write_text("two_stage: true\nstage2_codes: modes\n")
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "stage2-codes must be one of samples, means" in err and not (tmp_path / "bad").exists()


def test_a_resumed_two_stage_run_keeps_what_its_stage_2_trains_on(tmp_path, capsys):
    """A run written before stage2_codes existed trained stage 2 on the means: resuming it must not switch to draws
    (and record 'samples'); a different --stage2-codes once stage 2 has started is refused."""
    import json

    from pyro_vae.cli import main

    out = tmp_path / "ts"
    assert main(["train", "--two-stage", "--stage2-codes", "means", "--epochs", "1", "--stage2-epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["training"]["stage2_codes"]  # as an older run wrote it
    (out / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--stage2-epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["training"]["stage2_codes"] == "means"
    assert len(json.loads((out / "history.json").read_text())["stage2"]) == 2
    assert main(["train", "--out", str(out), "--resume", "--stage2-epochs", "3", "--stage2-codes", "samples",
                 "--no-progress"]) == 2
    assert "differs from the run's 'means'" in capsys.readouterr().err
