"""The saved-model format (``pyro_vae.saving``): what mutation testing (issue 34, ``docs/reliability.md``) found
unpinned. ``vae.json``'s content and layout, folders created with their parents, the device a model is loaded on,
a ``vae.json`` of version 0.1 (no ``class``), a class of the user's registered by name, convolutional networks,
and each damaged file named in its message."""

from __future__ import annotations

import json

import pytest
import torch

import pyro_vae
from pyro_vae import VAE
from pyro_vae._version import __version__
from pyro_vae.io import tensor_checksum
from pyro_vae.saving import MODEL_CLASSES, register_model_class


def _small(**kw):
    return VAE((1, 8, 8), latent_dim=2, hidden_dims=(16,), **kw)


def test_vae_json_holds_the_format_the_class_the_config_the_version_and_the_checksum(tmp_path):
    vae = _small()
    folder = vae.save(tmp_path / "new" / "nested" / "model")  # the missing folders are created
    text = (folder / "vae.json").read_text()
    meta = json.loads(text)
    assert meta == {"format": "pyro-vae/1", "class": "VAE", "config": vae.config, "pyro_vae_version": __version__,
                    "weights_sha256": tensor_checksum(vae.state_dict())}
    assert text == json.dumps(meta, indent=2, sort_keys=True) + "\n"  # readable, and stable under diff


def test_a_model_is_loaded_on_the_device_asked(tmp_path):
    """``map_location`` puts every parameter there (the ``meta`` device stands for a GPU on a machine without one)."""
    folder = _small().save(tmp_path / "m")
    for load in (VAE.load, pyro_vae.load):
        assert {p.device.type for p in load(folder, map_location="meta").parameters()} == {"meta"}
        assert {p.device.type for p in load(folder).parameters()} == {"cpu"}


def test_a_vae_json_without_a_class_is_a_vae(tmp_path):
    """Folders written before the class was recorded (version 0.1) hold a VAE."""
    vae = _small()
    folder = vae.save(tmp_path / "m")
    meta = json.loads((folder / "vae.json").read_text())
    del meta["class"]
    (folder / "vae.json").write_text(json.dumps(meta))
    again = pyro_vae.load(folder)
    assert type(again) is VAE
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), vae.state_dict().values()))


def test_a_registered_class_of_ones_own_is_loaded_by_name(tmp_path):
    class TinyVAE(VAE):
        pass

    try:
        assert register_model_class(TinyVAE) is TinyVAE and MODEL_CLASSES["TinyVAE"] is TinyVAE
        folder = TinyVAE((1, 8, 8), latent_dim=2, hidden_dims=(16,)).save(tmp_path / "m")
        assert type(pyro_vae.load(folder)) is TinyVAE
    finally:
        MODEL_CLASSES.pop("TinyVAE", None)


def test_convolutional_networks_are_saved_and_loaded_by_name(tmp_path):
    vae = _small(encoder="conv", decoder="conv")
    again = VAE.load(vae.save(tmp_path / "m"))
    assert again.config["encoder"] == again.config["decoder"] == "conv"
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(again.reconstruct(x), vae.eval().reconstruct(x))


def _rewrite(folder, **changes):
    meta = json.loads((folder / "vae.json").read_text())
    meta.update(changes)
    (folder / "vae.json").write_text(json.dumps(meta))


def test_each_damaged_file_is_named_in_its_message(tmp_path):
    folder = _small().save(tmp_path / "m")
    good = (folder / "vae.json").read_text()
    _rewrite(folder, format="pyro-vae/0")  # another format, its config still a dict
    with pytest.raises(ValueError, match=r"vae\.json is not a saved pyro-vae model \(expected format 'pyro-vae/1'\)"):
        pyro_vae.load(folder)
    (folder / "vae.json").write_text(good)
    _rewrite(folder, config=[1, 2])  # the right format, a config that is not a dict
    with pytest.raises(ValueError, match=r"vae\.json is not a saved pyro-vae VAE"):
        VAE.load(folder)
    (folder / "vae.json").write_text(good)
    _rewrite(folder, **{"class": "Mystery"})
    unknown = r"vae\.json holds an unknown model class 'Mystery'; known: \[.*'VAE'.*\] \(a class of your own registers"
    with pytest.raises(ValueError, match=unknown + r" with pyro_vae\.saving\.register_model_class"):
        pyro_vae.load(folder)
    (folder / "vae.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"vae\.json is not valid JSON"):
        pyro_vae.load(folder)
    (folder / "vae.json").write_text(good)
    torch.save([torch.zeros(2)], folder / "weights.pt")
    with pytest.raises(ValueError, match=r"weights\.pt does not hold a state dict of tensors"):
        pyro_vae.load(folder)


def test_weights_of_another_shape_are_named_with_their_shapes(tmp_path):
    _small().save(tmp_path / "a")
    VAE((1, 8, 8), latent_dim=3, hidden_dims=(16,)).save(tmp_path / "b")
    (tmp_path / "b" / "vae.json").write_text((tmp_path / "a" / "vae.json").read_text())
    with pytest.raises(ValueError) as info:
        VAE.load(tmp_path / "b")
    # the first three differences, sorted: the decoder's first layer as the config says and as the weights are
    assert str(info.value) == (
        f"the weights in {tmp_path / 'b'} do not fit the VAE its configuration describes (first differences, name "
        "and shape: [('decoder.net.0.weight', (16, 2)), ('decoder.net.0.weight', (16, 3)), ('encoder.net.2.bias', "
        "(4,))]); a file was changed or they come from different models")
