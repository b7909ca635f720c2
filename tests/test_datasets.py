"""Tests of ``pyro_vae.datasets`` with the real data files in ``../shared/data`` (or ``$PYRO_VAE_DATA``)."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae import datasets
from pyro_vae.datasets import (
    DATASETS,
    SPLITS,
    DataChecksumError,
    DataFormatError,
    DataNotFoundError,
    binarize,
    event_shape,
    from_array,
    linear_gaussian_log_prob,
    linear_gaussian_params,
    load,
    read_amat,
    read_idx,
)

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_ROOT = Path(os.environ["PYRO_VAE_DATA"]) if os.environ.get("PYRO_VAE_DATA") else ROOT

FILE_SETS = ("mnist", "fashion-mnist", "binarized-mnist")
SHA = {
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "binarized-mnist/binarized_mnist.npz": "350243cb824d66d022e0c3e87cac231231668817ff03f5f6d7b6533017d56b4b",
}


def needs(subfolder: str) -> pytest.MarkDecorator:
    """Skip unless the real data folder ``<DATA_ROOT>/<subfolder>`` exists."""
    folder = DATA_ROOT / subfolder
    return pytest.mark.skipif(
        not folder.is_dir(),
        reason=f"real data folder {folder} not found (put the files there or set PYRO_VAE_DATA to the root)",
    )


# ------------------------------------------------------------------------------------------------------------
# names, splits, shapes
# ------------------------------------------------------------------------------------------------------------


def test_names_and_splits_tables() -> None:
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "binarized-mnist", "ring", "linear-gaussian"}
    assert set(SPLITS) == set(DATASETS)
    for name in DATASETS:
        assert isinstance(event_shape(name), tuple)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown data set 'cifar'") as info:
        load("cifar")
    for name in DATASETS:
        assert repr(name) in str(info.value)
    with pytest.raises(ValueError, match="unknown data set"):
        event_shape("cifar")


@pytest.mark.parametrize("name", list(DATASETS))
def test_unknown_split_lists_valid_splits(name: str) -> None:
    with pytest.raises(ValueError, match="unknown split 'validation'") as info:
        load(name, "validation", root=DATA_ROOT)
    for split in SPLITS[name]:
        assert repr(split) in str(info.value)


# ------------------------------------------------------------------------------------------------------------
# digits (no files)
# ------------------------------------------------------------------------------------------------------------


def test_digits_needs_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.datasets import load_digits

    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    ref = load_digits()
    x_all = torch.tensor(ref.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    y_all = torch.tensor(ref.target, dtype=torch.int64)
    expected = {"train": slice(0, 1500), "valid": slice(1200, 1500), "test": slice(1500, 1797),
                "train-without-valid": slice(0, 1200)}
    assert set(expected) == set(SPLITS["digits"])
    for split, sl in expected.items():
        x, y = load("digits", split, return_labels=True)
        n = SPLITS["digits"][split]
        assert x.shape == (n, 1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        torch.testing.assert_close(x, x_all[sl], rtol=0, atol=0)
        assert torch.equal(y, y_all[sl])
    assert x_all.shape[0] == 1797 and event_shape("digits") == (1, 8, 8)
    train = load("digits", "train")
    assert torch.equal(load("digits", "valid"), train[-300:])
    assert torch.equal(load("digits", "train-without-valid"), train[:1200])


def test_returned_tensor_is_a_copy() -> None:
    x = load("digits", "test")
    x.fill_(7.0)
    assert load("digits", "test").max() == 1.0


def test_num_samples_on_fixed_sets() -> None:
    full = load("digits", "valid")
    part = load("digits", "valid", num_samples=10)
    assert torch.equal(part, full[:10])
    with pytest.raises(ValueError, match="only 300"):
        load("digits", "valid", num_samples=301)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            load("digits", "valid", num_samples=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST / binarized MNIST from the real files
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs(n)) for n in ("mnist", "fashion-mnist")])
def test_idx_sets_shapes_ranges_and_splits(name: str) -> None:
    out = {split: load(name, split, DATA_ROOT, return_labels=True) for split in SPLITS[name]}
    for split, (x, y) in out.items():
        n = SPLITS[name][split]
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert 0 <= int(y.min()) and int(y.max()) == 9
        # grey levels are k / 255 exactly
        assert torch.equal(torch.round(x[:100] * 255) / 255, x[:100])
    x_train, y_train = out["train"]
    assert torch.equal(out["valid"][0], x_train[50000:]) and torch.equal(out["valid"][1], y_train[50000:])
    assert torch.equal(out["train-without-valid"][0], x_train[:50000])
    assert torch.equal(out["train-without-valid"][1], y_train[:50000])
    assert not torch.equal(out["test"][0], x_train[:10000])
    assert event_shape(name) == tuple(x_train.shape[1:])


@needs("mnist")
def test_mnist_label_counts_and_first_image() -> None:
    _, y_test = load("mnist", "test", DATA_ROOT, return_labels=True)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(y_test, minlength=10).tolist() == counts
    x_train, y_train = load("mnist", "train", DATA_ROOT, return_labels=True)
    assert torch.bincount(y_train, minlength=10).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949
    ]
    assert y_train[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    # the image bytes are exactly the decompressed IDX payload
    with gzip.open(DATA_ROOT / "mnist" / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    x_test = load("mnist", "test", DATA_ROOT)
    assert torch.equal(x_test, torch.from_numpy(raw.astype(np.float32)) / 255)


@needs("fashion-mnist")
def test_fashion_label_counts() -> None:
    _, y_test = load("fashion-mnist", "test", DATA_ROOT, return_labels=True)
    assert torch.bincount(y_test, minlength=10).tolist() == [1000] * 10
    _, y_train = load("fashion-mnist", "train", DATA_ROOT, return_labels=True)
    assert torch.bincount(y_train, minlength=10).tolist() == [6000] * 10
    x_mnist = load("mnist", "test", DATA_ROOT) if (DATA_ROOT / "mnist").is_dir() else None
    if x_mnist is not None:
        assert not torch.equal(load("fashion-mnist", "test", DATA_ROOT), x_mnist)


@needs("binarized-mnist")
def test_binarized_mnist_splits_and_ones() -> None:
    ones = {"train": 5118041, "valid": 1028036, "test": 1038896}
    out = {split: load("binarized-mnist", split, DATA_ROOT) for split in SPLITS["binarized-mnist"]}
    for split, x in out.items():
        assert x.shape == (SPLITS["binarized-mnist"][split], 1, 28, 28) and x.dtype == torch.float32
        assert bool(((x == 0) | (x == 1)).all()) and 0 < float(x.mean()) < 0.5
        if split in ones:
            assert int(x.sum()) == ones[split]
    assert int(out["test"].sum()) == 1038896
    assert torch.equal(out["train+valid"], torch.cat([out["train"], out["valid"]]))
    with pytest.raises(ValueError, match="no labels"):
        load("binarized-mnist", "test", DATA_ROOT, return_labels=True)


@needs("mnist")
def test_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYRO_VAE_DATA", str(DATA_ROOT))
    x = load("mnist", "test", num_samples=3)
    assert x.shape == (3, 1, 28, 28)
    # an explicit root wins over the environment variable
    monkeypatch.setenv("PYRO_VAE_DATA", str(tmp_path))
    assert torch.equal(load("mnist", "test", DATA_ROOT, num_samples=3), x)
    with pytest.raises(DataNotFoundError):
        load("mnist", "test")


@needs("mnist")
def test_cached_arrays_cannot_be_corrupted() -> None:
    x, y = load("mnist", "test", DATA_ROOT, return_labels=True)
    x.zero_()
    y.fill_(3)
    x2, y2 = load("mnist", "test", DATA_ROOT, return_labels=True)
    assert x2.max() == 1.0 and torch.bincount(y2).tolist()[0] == 980


# ------------------------------------------------------------------------------------------------------------
# error messages for missing and corrupt files
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILE_SETS)
def test_no_root_and_no_env(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("PYRO_VAE_DATA", raising=False)
    with pytest.raises(DataNotFoundError) as info:
        load(name, "test")
    msg = str(info.value)
    assert "root=" in msg and "PYRO_VAE_DATA" in msg
    assert isinstance(info.value, FileNotFoundError)


def test_missing_file_message(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load("mnist", "test", root=tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for rel in ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"):
        assert str(tmp_path.resolve() / rel) in msg
        assert SHA[rel] in msg
    assert str(tmp_path.resolve() / "mnist") in msg

    with pytest.raises(DataNotFoundError) as info:
        load("binarized-mnist", "valid", root=tmp_path)
    msg = str(info.value)
    assert "binarized_mnist.npz" in msg and SHA["binarized-mnist/binarized_mnist.npz"] in msg
    assert "binarized_mnist_valid.amat" in msg


def _copy_small_mnist_test_files(tmp_path: Path) -> Path:
    """``tmp_path/mnist`` with a copy of the real t10k labels and a link to the real t10k images."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copyfile(DATA_ROOT / "mnist" / "t10k-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    os.symlink(DATA_ROOT / "mnist" / "t10k-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz")
    return folder


@needs("mnist")
def test_corrupt_file_message(tmp_path: Path) -> None:
    folder = _copy_small_mnist_test_files(tmp_path)
    # the untouched copy loads and equals the real data
    assert torch.equal(load("mnist", "test", tmp_path), load("mnist", "test", DATA_ROOT))
    target = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.unlink()  # a new file (new mtime and inode): the checksum cache must not hide the change
    target.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(DataChecksumError) as info:
        load("mnist", "test", tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "t10k-labels-idx1-ubyte.gz" in msg
    assert SHA["mnist/t10k-labels-idx1-ubyte.gz"] in msg and actual in msg
    assert "re-copy" in msg


@needs("mnist")
def test_checksum_verified_once_per_path_size_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy_small_mnist_test_files(tmp_path)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    calls: list[Path] = []
    real = datasets._sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(datasets, "_sha256_file", counting)
    for _ in range(3):
        load("mnist", "test", tmp_path, num_samples=2)
    assert sum(p.name == labels.name and p.parent == folder for p in calls) == 1
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load("mnist", "test", tmp_path, num_samples=2)
    assert sum(p.name == labels.name and p.parent == folder for p in calls) == 2


# ------------------------------------------------------------------------------------------------------------
# parsers: IDX and .amat
# ------------------------------------------------------------------------------------------------------------


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">i{len(dims)}i", magic, *dims) + payload)


def test_read_idx(tmp_path: Path) -> None:
    good = tmp_path / "good.gz"
    _write_idx(good, 2051, (2, 3, 4), bytes(range(24)))
    arr = read_idx(good, expected_magic=2051)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8 and arr[1, 2, 3] == 23

    with pytest.raises(DataFormatError, match="magic"):
        read_idx(good, expected_magic=2049)

    short = tmp_path / "short.gz"
    _write_idx(short, 2049, (10,), bytes(5))
    with pytest.raises(DataFormatError, match="count 10"):
        read_idx(short, expected_magic=2049)

    not_bytes = tmp_path / "int32.gz"
    _write_idx(not_bytes, 0x00000C01, (1,), bytes(4))
    with pytest.raises(DataFormatError, match="unsigned bytes"):
        read_idx(not_bytes)

    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"this is not gzip data")
    with pytest.raises(DataFormatError, match="decompress"):
        read_idx(not_gzip)


def _write_amat(path: Path, rows: np.ndarray) -> None:
    np.savetxt(path, rows, fmt="%d", delimiter=" ")


def test_read_amat_fast_and_slow_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = (rng.random((5, 784)) < 0.3).astype(np.uint8)
    exact = tmp_path / "exact.amat"
    _write_amat(exact, rows)
    assert exact.stat().st_size == 5 * 1568
    got = read_amat(exact)
    assert got.dtype == np.uint8 and got.shape == (5, 784) and np.array_equal(got, rows)

    loose = tmp_path / "loose.amat"  # CRLF line ends and double spaces still parse
    loose.write_text("\r\n".join("  ".join(str(v) for v in r) for r in rows) + "\r\n")
    assert np.array_equal(read_amat(loose), rows)

    bad = tmp_path / "bad.amat"
    bad_rows = rows.copy()
    bad_rows[2, 7] = 2
    _write_amat(bad, bad_rows)
    with pytest.raises(DataFormatError, match="0 or 1"):
        read_amat(bad)

    short = tmp_path / "short.amat"
    short.write_text("0 1 0\n")
    with pytest.raises(DataFormatError, match="784"):
        read_amat(short)


@needs("binarized-mnist")
def test_binarized_mnist_amat_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with np.load(DATA_ROOT / "binarized-mnist" / "binarized_mnist.npz", allow_pickle=False) as z:
        rows = {split: z[split][:7] for split in ("train", "valid", "test")}
    folder = tmp_path / "binarized-mnist"
    folder.mkdir()
    for split, r in rows.items():
        path = folder / f"binarized_mnist_{split}.amat"
        _write_amat(path, r)
        # the real checksums are those of the full files; use the tiny files' own sha256 here
        monkeypatch.setitem(
            datasets._SHA256, ("binarized-mnist", path.name), hashlib.sha256(path.read_bytes()).hexdigest()
        )
    x = load("binarized-mnist", "test", tmp_path)
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(rows["test"].astype(np.float32)).reshape(7, 1, 28, 28))
    assert torch.equal(x, load("binarized-mnist", "test", DATA_ROOT, num_samples=7))
    tv = load("binarized-mnist", "train+valid", tmp_path)
    assert tv.shape == (14, 1, 28, 28) and torch.equal(tv[7:], load("binarized-mnist", "valid", tmp_path))

    # an altered .amat file is refused by its checksum
    other = tmp_path / "other"
    (other / "binarized-mnist").mkdir(parents=True)
    path = other / "binarized-mnist" / "binarized_mnist_test.amat"
    flipped = rows["test"].copy()
    flipped[0, 0] ^= 1
    _write_amat(path, flipped)
    with pytest.raises(DataChecksumError, match="binarized_mnist_test.amat"):
        load("binarized-mnist", "test", other)


# ------------------------------------------------------------------------------------------------------------
# dynamic binarization
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binarize(dtype: torch.dtype) -> None:
    probs = load("digits", "train").to(dtype)
    g = torch.Generator().manual_seed(1)
    b = binarize(probs, generator=g)
    assert b.shape == probs.shape and b.dtype == dtype and b.device == probs.device
    assert set(torch.unique(b).tolist()) == {0.0, 1.0}
    assert torch.all(b[probs == 0] == 0) and torch.all(b[probs == 1] == 1)
    n = probs.numel()
    stderr = math.sqrt(float((probs * (1 - probs)).sum())) / n
    assert abs(float(b.mean()) - float(probs.mean())) < 5 * stderr
    # reproducible with a seeded generator, fresh otherwise
    assert torch.equal(binarize(probs, torch.Generator().manual_seed(1)), b)
    assert not torch.equal(binarize(probs, torch.Generator().manual_seed(2)), b)
    with pytest.raises(ValueError, match="floating"):
        binarize(torch.ones(3, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------------------
# toy sets
# ------------------------------------------------------------------------------------------------------------


def test_ring() -> None:
    state = torch.random.get_rng_state()
    x, labels = load("ring", return_labels=True)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not be used"
    n = SPLITS["ring"]["train"]
    assert x.shape == (n, 2) and x.dtype == torch.float32 and event_shape("ring") == (2,)
    # ||x|| = 1 + ||z|| / 10 with ||z|| Rayleigh: P(max over n points of ||z|| > t) <= n exp(-t^2 / 2).
    t = math.sqrt(2 * math.log(n / 1e-9))  # exceeded with probability < 1e-9
    norms = x.double().norm(dim=-1)
    assert float(norms.min()) >= 1.0 - 1e-6
    assert float(norms.max()) <= 1.0 + t / 10
    # mean of ||x||: 1 + sqrt(pi / 2) / 10, sd of ||x||: sqrt((4 - pi) / 2) / 10
    mean, sd = 1 + math.sqrt(math.pi / 2) / 10, math.sqrt((4 - math.pi) / 2) / 10
    assert abs(float(norms.mean()) - mean) < 5 * sd / math.sqrt(n)
    # labels: 8 angle sectors
    assert labels.dtype == torch.int64 and labels.shape == (n,)
    angle = torch.atan2(x[:, 1].double(), x[:, 0].double())
    expected = ((angle + math.pi) / (2 * math.pi) * 8).floor().long().clamp(0, 7)
    assert (labels == expected).float().mean() > 0.999  # float32 rounding at sector borders
    assert torch.bincount(labels, minlength=8).min() > n / 8 - 5 * math.sqrt(n / 8)
    # seeds and splits
    assert torch.equal(load("ring", seed=0), x)
    assert not torch.equal(load("ring", seed=1), x)
    valid, test = load("ring", "valid"), load("ring", "test")
    assert valid.shape == (1000, 2) and test.shape == (1000, 2)
    assert not torch.equal(valid, x[:1000]) and not torch.equal(valid, test)
    assert load("ring", "test", num_samples=123).shape == (123, 2)


def test_linear_gaussian_params_fixed() -> None:
    p = linear_gaussian_params()
    assert p.W.shape == (4, 2) and p.b.shape == (4,) and p.sigma.shape == ()
    assert p.W.dtype == torch.float64 and float(p.sigma) > 0
    torch.manual_seed(123)
    q = linear_gaussian_params()
    assert all(torch.equal(a, b) for a, b in zip(p, q))
    p32 = linear_gaussian_params(dtype=torch.float32)
    assert p32.W.dtype == torch.float32 and torch.allclose(p32.W.double(), p.W)
    p3 = linear_gaussian_params(dim=6, latent_dim=3)
    assert p3.W.shape == (6, 3) and p3.b.shape == (6,)
    torch.testing.assert_close(p.covariance, p.W @ p.W.T + p.sigma**2 * torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError):
        linear_gaussian_params(dim=0)


def test_linear_gaussian_moments() -> None:
    n = 20000
    state = torch.random.get_rng_state()
    x = load("linear-gaussian", num_samples=n, seed=3).double()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert x.shape == (n, 4) and event_shape("linear-gaussian") == (4,)
    p = linear_gaussian_params()
    cov = p.covariance
    # mean: stderr sqrt(Sigma_ii / n)
    mean_err = (x.mean(0) - p.b).abs()
    assert torch.all(mean_err < 5 * torch.sqrt(torch.diag(cov) / n)), mean_err
    # covariance: stderr of the sample covariance sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n)
    emp = torch.cov(x.T)
    var = torch.diag(cov)
    cov_se = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert torch.all((emp - cov).abs() < 5 * cov_se), (emp - cov) / cov_se
    _, labels = load("linear-gaussian", "test", return_labels=True)
    assert labels.shape == (1000,) and labels.dtype == torch.int64 and int(labels.abs().sum()) == 0


def test_linear_gaussian_log_prob() -> None:
    p = linear_gaussian_params()
    x = load("linear-gaussian", "test")
    lp = linear_gaussian_log_prob(x, p)
    assert lp.shape == (1000,) and lp.dtype == torch.float64
    # direct numpy formula
    W, b, s = p.W.numpy(), p.b.numpy(), float(p.sigma)
    sigma = W @ W.T + s**2 * np.eye(4)
    diff = x.double().numpy() - b
    chol = np.linalg.cholesky(sigma)
    maha = (np.linalg.solve(chol, diff.T) ** 2).sum(0)
    logdet = 2 * np.log(np.diag(chol)).sum()
    ref = -0.5 * (4 * np.log(2 * np.pi) + logdet + maha)
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-10, atol=1e-10)
    # the data come from this density: E[log p(x)] = -entropy, Var[log p(x)] = D / 2
    n = 20000
    lp_train = linear_gaussian_log_prob(load("linear-gaussian", num_samples=n), p)
    neg_entropy = -0.5 * (4 * (1 + np.log(2 * np.pi)) + logdet)
    assert abs(float(lp_train.mean()) - neg_entropy) < 5 * math.sqrt(4 / 2 / n)
    with pytest.raises(ValueError, match="dim"):
        linear_gaussian_log_prob(torch.zeros(3, 5), p)


# ------------------------------------------------------------------------------------------------------------
# from_array
# ------------------------------------------------------------------------------------------------------------


def test_from_array() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = from_array(a)
    assert t.dtype == torch.float32 and t.shape == (3, 4) and float(t[2, 3]) == 11.0
    t[0, 0] = 99
    assert a[0, 0] == 0, "must not share memory with the input"
    assert from_array([[0.5, 1.0]]).shape == (1, 2)
    assert torch.equal(from_array(np.array([True, False])), torch.tensor([1.0, 0.0]))
    src = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    out = from_array(src)
    assert out.dtype == torch.float32 and not out.requires_grad
    for bad, match in [
        (np.array([1.0, np.nan]), "NaN"),
        (np.array([[np.inf]]), "infinite"),
        (torch.tensor([0.0, float("nan")]), "NaN"),
        (np.array([1e300]), "float32"),
        (np.array(["a", "b"]), "non-numeric"),
        (np.array([object(), 1], dtype=object), "non-numeric"),
        (np.array([1 + 2j]), "non-numeric"),
        (np.zeros((0, 3)), "empty"),
        (np.array(1.0), "0-dimensional"),
        (torch.zeros(2, dtype=torch.complex64), "complex"),
    ]:
        with pytest.raises(ValueError, match=match) as info:
            from_array(bad, name="my data")
        assert "my data" in str(info.value)
