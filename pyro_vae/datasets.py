r"""Data sets for variational autoencoders: image benchmarks, scikit-learn's digits, toy sets and arrays.

Every loader returns an in-memory ``torch.float32`` tensor of shape ``(N, *event_shape)`` (and, with
``return_labels=True``, an ``int64`` label tensor of shape ``(N,)``). At MNIST sizes a plain tensor is faster
than a ``DataLoader``; dynamic binarization (:func:`binarize`) is applied per batch on the device.

========================  ================  ===========  ===================================================
name                      event shape       values       splits (number of examples)
========================  ================  ===========  ===================================================
``digits``                ``(1, 8, 8)``     [0, 1]       train 1500, valid 300, test 297,
                                                         train-without-valid 1200
``mnist``                 ``(1, 28, 28)``   [0, 1]       train 60000, valid 10000, test 10000,
                                                         train-without-valid 50000
``fashion-mnist``         ``(1, 28, 28)``   [0, 1]       same as ``mnist``
``binarized-mnist``       ``(1, 28, 28)``   {0, 1}       train 50000, valid 10000, test 10000,
                                                         train+valid 60000
``ring``                  ``(2,)``          real         train 10000, valid 1000, test 1000 (defaults)
``linear-gaussian``       ``(4,)``          real         train 10000, valid 1000, test 1000 (defaults)
========================  ================  ===========  ===================================================

Each data set's facts (event shape, values, labels, files and their checksums, splits and the ranges of the
source arrays they hold) are one :class:`DatasetSpec` in :data:`SPECS`; :data:`SPLITS`, :data:`DATASETS` and
:func:`event_shape` are read from them. Adding a data set is adding a spec.

.. rubric:: Splits

* ``digits``: scikit-learn's bundled 8x8 digits (:func:`sklearn.datasets.load_digits`, needs no files), grey
  values divided by 16. ``test`` is the last 297 images, ``train`` the first 1500, ``valid`` the last 300 of
  ``train`` and ``train-without-valid`` the first 1200 (so, as for MNIST, ``valid`` is the tail of ``train``).
* ``mnist``, ``fashion-mnist``: the official IDX files, grey values divided by 255. ``train`` is the official
  60000 training images, ``test`` the 10000 ``t10k`` images, ``valid`` the last 10000 training images and
  ``train-without-valid`` the first 50000 (the common VAE practice; there is no official validation split).
* ``binarized-mnist``: the fixed binarization of Larochelle & Murray (2011) with its own
  train/valid/test split. It has no labels.
* ``ring`` and ``linear-gaussian`` are synthetic and **real-valued, not in [0, 1]**: use them with a Gaussian
  (or other real-valued) likelihood. They are drawn with a local :class:`torch.Generator` (the global RNG is
  never touched) whose seed is derived from ``seed``, the data set and the split, so the splits are
  independent draws. ``ring`` (Doersch 2016, fig. 1): :math:`z \sim \mathcal N(0, I_2)`,
  :math:`x = z / 10 + z / \lVert z \rVert`; its labels are the angle of ``x`` in 8 equal sectors
  (``0..7``, counter-clockwise from the negative x axis). ``linear-gaussian``:
  :math:`z \sim \mathcal N(0, I_d)`, :math:`x = W z + b + \sigma \varepsilon` with the fixed
  parameters of :func:`linear_gaussian_params`, so the exact :math:`\log p(x)` is known
  (:func:`linear_gaussian_log_prob`); its labels are zeros.

.. rubric:: Files

The image sets are read from ``root`` (argument) or else from the folder in the ``PYRO_VAE_DATA`` environment
variable, laid out as::

    <root>/mnist/{train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
                  t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz}
    <root>/fashion-mnist/  (the same four file names)
    <root>/binarized-mnist/binarized_mnist.npz
        (or the original text files binarized_mnist_{train,valid,test}.amat)

Nothing is ever downloaded. Every file is checked against its known sha256 (once per process for a given
path, size and modification time); a missing file raises :class:`DataNotFoundError`, a corrupt one
:class:`DataChecksumError`, both naming the file, the expected checksum and the folder it belongs in. Decoded
arrays are cached in memory per process (keyed by data set, file split and resolved root); every call returns
new tensors, so changing a returned tensor never changes the cache.

.. rubric:: References

* Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document recognition", 1998.
* H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST", arXiv:1708.07747, 2017.
* H. Larochelle, I. Murray, "The Neural Autoregressive Distribution Estimator", AISTATS 2011.
* C. Doersch, "Tutorial on Variational Autoencoders", arXiv:1606.05908, 2016.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .checks import whole_number

__all__ = [
    "DATASETS",
    "SPECS",
    "SPLITS",
    "DatasetSpec",
    "SplitSpec",
    "DataChecksumError",
    "DataFormatError",
    "DataNotFoundError",
    "LinearGaussianParams",
    "binarize",
    "clear_cache",
    "event_shape",
    "from_array",
    "linear_gaussian_log_prob",
    "linear_gaussian_params",
    "load",
    "read_amat",
    "read_idx",
]

#: Name of the environment variable that points at the data folder.
ENV_VAR = "PYRO_VAE_DATA"


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DataNotFoundError(FileNotFoundError):
    """A data file (or the data folder itself) could not be found."""


class DataChecksumError(ValueError):
    """A data file exists but its sha256 differs from the known value (a truncated or altered copy)."""


class DataFormatError(ValueError):
    """A data file has a checksum-valid name but its content does not have the expected layout."""


# --------------------------------------------------------------------------------------------------
# Specs: one per data set (its shape, values, files and checksums, splits and where they lie)
# --------------------------------------------------------------------------------------------------

_Loaded = tuple[torch.Tensor, torch.Tensor | None]
_Arrays = tuple[np.ndarray, np.ndarray | None]


@dataclass(frozen=True, eq=False)
class SplitSpec:
    """One split of a data set: its number of examples and where they lie in the data set's source arrays."""

    #: the number of examples (for a toy set: the default number of points drawn)
    size: int
    #: ``(source, start, stop)`` ranges of the source arrays, concatenated in this order; empty for a toy set
    parts: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.parts and sum(stop - start for _, start, stop in self.parts) != self.size:
            raise ValueError(f"the parts {self.parts} do not hold {self.size} examples")


def _split(*parts: tuple[str, int, int]) -> SplitSpec:
    """A split made of the given ranges of source arrays."""
    return SplitSpec(sum(stop - start for _, start, stop in parts), tuple(parts))


@dataclass(frozen=True, eq=False)
class DatasetSpec:
    """Everything the module knows about one data set; :data:`SPECS` holds one per name, and :data:`SPLITS`,
    :data:`DATASETS` and :func:`event_shape` are read from them."""

    name: str
    #: the shape of one example
    event_shape: tuple[int, ...]
    #: split name -> :class:`SplitSpec`
    splits: Mapping[str, SplitSpec]
    #: the values of the examples: ``"[0, 1]"``, ``"{0, 1}"`` (binary) or ``"real"``
    values: str
    has_labels: bool = True
    #: file name -> its sha256 (the files in ``<root>/<name>/``; none for a set that needs no files)
    files: Mapping[str, str] = field(default_factory=dict)
    #: source array -> its number of examples where the reader checks it (the ``(source, start, stop)`` of the
    #: splits refer to these arrays)
    sources: Mapping[str, int | None] = field(default_factory=dict)
    #: the stored values are divided by it (255 for grey bytes)
    scale: float = 1.0
    #: ``read(spec, source, root) -> (examples, labels or None)``, the source's arrays (cached); None for a toy set
    read: Callable[[DatasetSpec, str, Any], _Arrays] | None = None
    #: ``draw(n, generator) -> (x float32 (n, *event_shape), labels int64 (n,))``, for a toy set
    draw: Callable[[int, torch.Generator], _Loaded] | None = None

    @property
    def binary(self) -> bool:
        """Whether every value is exactly 0 or 1."""
        return self.values == "{0, 1}"


_IDX_IMAGES_MAGIC = 0x00000803  # 2051
_IDX_LABELS_MAGIC = 0x00000801  # 2049
_AMAT_NAMES = {s: f"binarized_mnist_{s}.amat" for s in ("train", "valid", "test")}
_NPZ_NAME = "binarized_mnist.npz"
_RING_SECTORS = 8
_LG_DIM = 4
_LG_LATENT_DIM = 2

# Process-wide caches.
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_ARRAY_CACHE: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray | None]] = {}


def clear_cache() -> None:
    """Forget the decoded arrays and verified checksums cached by this process (frees their memory)."""
    _ARRAY_CACHE.clear()
    _SHA_CACHE.clear()


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        valid = ", ".join(repr(n) for n in SPECS)
        raise ValueError(f"unknown data set {name!r}; valid names are: {valid}")
    return SPECS[name]


def _split_spec(spec: DatasetSpec, split: str) -> SplitSpec:
    if split not in spec.splits:
        valid = ", ".join(repr(s) for s in spec.splits)
        raise ValueError(f"unknown split {split!r} for data set {spec.name!r}; valid splits are: {valid}")
    return spec.splits[split]


def event_shape(name: str) -> tuple[int, ...]:
    """The shape of one example of a data set.

    :param name: a data set name (a key of :data:`DATASETS`).
    :returns: the event shape, e.g. ``(1, 28, 28)`` for ``mnist`` or ``(2,)`` for ``ring``.
    :raises ValueError: for an unknown name.
    """
    return _spec(name).event_shape


# --------------------------------------------------------------------------------------------------
# Files: root, existence, checksums
# --------------------------------------------------------------------------------------------------


def _resolve_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise DataNotFoundError(
                f"data set {name!r} is read from files, but no data folder was given: pass root=<folder> to "
                f"pyro_vae.datasets.load or set the environment variable {ENV_VAR}=<folder>, where <folder> "
                f"contains mnist/, fashion-mnist/ and binarized-mnist/ (the 'digits' set needs no files)"
            )
        root = env
    return Path(root).expanduser().resolve()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_message(name: str, paths: list[Path]) -> str:
    lines = [f"data set {name!r}: missing file(s):"]
    for p in paths:
        lines.append(f"  {p}  (expected sha256 {_SHA256[(name, p.name)]})")
    folder = paths[0].parent
    lines.append(
        f"Copy the file(s) into the folder {folder}{os.sep} (that is, <root>/{folder.name}/ where root is "
        f"the root= argument or ${ENV_VAR}); nothing is downloaded. See shared/data/README.md for sources."
    )
    return "\n".join(lines)


def _verify(name: str, path: Path) -> None:
    """Check that ``path`` exists and has the known sha256 (hashing at most once per path, size and mtime)."""
    expected = _SHA256[(name, path.name)]
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataNotFoundError(_missing_message(name, [path])) from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    actual = _SHA_CACHE.get(key)
    if actual is None:
        actual = _sha256_file(path)
        _SHA_CACHE[key] = actual
    if actual != expected:
        raise DataChecksumError(
            f"data set {name!r}: file {path} has sha256 {actual}, but {path.name} should have sha256 "
            f"{expected} (size {st.st_size} bytes). The copy is truncated or altered: re-copy {path.name} "
            f"into {path.parent}{os.sep} from the original source (see shared/data/README.md)."
        )


def _require(name: str, paths: list[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataNotFoundError(_missing_message(name, missing))
    for p in paths:
        _verify(name, p)


# --------------------------------------------------------------------------------------------------
# Parsers
# --------------------------------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str], *, expected_magic: int | None = None) -> np.ndarray:
    """Read a (gzip-compressed, if the name ends in ``.gz``) IDX file of unsigned bytes.

    The header is a big-endian int32 magic number ``0x0000080N`` (``0x08``: unsigned bytes, ``N``: number of
    dimensions) followed by ``N`` big-endian int32 sizes; the payload must hold exactly their product of
    bytes.

    :param path: the file.
    :param expected_magic: if given, the magic number the file must have (2051 for images, 2049 for labels).
    :returns: a read-only ``uint8`` array with the shape given in the header, e.g. ``(60000, 28, 28)``.
    :raises DataFormatError: for a bad magic number, an unsupported type, or a size that does not match.
    """
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot decompress the IDX file ({e})") from e
    if len(buf) < 4:
        raise DataFormatError(f"{path}: {len(buf)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">i", buf[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataFormatError(
            f"{path}: IDX magic number is {magic:#010x}, expected {expected_magic:#010x} ({expected_magic})"
        )
    zero, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if zero != 0 or type_code != 0x08 or ndim == 0:
        raise DataFormatError(f"{path}: not an IDX file of unsigned bytes (magic number {magic:#010x})")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFormatError(f"{path}: {len(buf)} bytes, too short for an IDX header of {ndim} dimensions")
    dims = struct.unpack(f">{ndim}i", buf[4:header])
    if any(d < 0 for d in dims):
        raise DataFormatError(f"{path}: negative size in IDX header {dims}")
    expected_len = header + math.prod(dims)
    if len(buf) != expected_len:
        raise DataFormatError(
            f"{path}: header announces {dims} (count {dims[0]}), i.e. {expected_len} bytes, but the file "
            f"holds {len(buf)} bytes"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def read_amat(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one of Larochelle's binarized-MNIST text files (``binarized_mnist_*.amat``).

    Each line holds one image: 784 values ``0``/``1`` separated by single spaces.

    :param path: the file.
    :returns: a read-only ``uint8`` array of shape ``(N, 784)`` with values 0 and 1.
    :raises DataFormatError: if a line does not hold 784 values that are all 0 or 1.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:4] == b"MATL":
        raise DataFormatError(
            f"{path}: this is a MATLAB .mat file with an .amat name (as in some repositories), not "
            f"Larochelle's text file; convert it or use binarized_mnist.npz"
        )
    row_len = 2 * 784
    arr = np.frombuffer(raw, dtype=np.uint8)
    if arr.size and arr.size % row_len == 0:  # fast path: the exact original layout
        rows = arr.reshape(-1, row_len)
        values = rows[:, 0::2]
        if (
            np.isin(values, (ord("0"), ord("1"))).all()
            and (rows[:, 1:-1:2] == ord(" ")).all()
            and (rows[:, -1] == ord("\n")).all()
        ):
            out = values - ord("0")
            out.setflags(write=False)
            return out
    # Slow path: any whitespace layout.
    try:
        lines = [line.split() for line in raw.decode("ascii").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not an ASCII text file ({e})") from e
    if not lines:
        raise DataFormatError(f"{path}: no data rows")
    for i, line in enumerate(lines):
        if len(line) != 784:
            raise DataFormatError(f"{path}: line {i + 1} has {len(line)} values, expected 784")
    try:
        out = np.array(lines, dtype=np.float64)
    except ValueError as e:
        raise DataFormatError(f"{path}: non-numeric value ({e})") from e
    if not np.isin(out, (0.0, 1.0)).all():
        raise DataFormatError(f"{path}: values must be 0 or 1")
    out = out.astype(np.uint8)
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------------
# Readers of the source arrays: (spec, source, root) -> (examples, labels or None), cached
# --------------------------------------------------------------------------------------------------


def _take(n_avail: int, name: str, split: str, num_samples: int | None) -> int:
    if num_samples is None:
        return n_avail
    if num_samples > n_avail:
        raise ValueError(
            f"num_samples={num_samples} but split {split!r} of {name!r} has only {n_avail} examples"
        )
    return num_samples


def _images_to_tensors(spec: DatasetSpec, images: np.ndarray, labels: np.ndarray | None) -> _Loaded:
    x = torch.from_numpy(images.astype(np.float32))  # astype copies: the cache is never shared
    if spec.scale != 1.0:
        x.div_(spec.scale)
    x = x.reshape((len(images),) + spec.event_shape)
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return x, y


def _read_digits(spec: DatasetSpec, source: str, root: Any) -> _Arrays:
    """scikit-learn's bundled digits, all 1797 (needs no files)."""
    key = (spec.name, source, "")
    if key not in _ARRAY_CACHE:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = np.asarray(bunch.data, dtype=np.float64)
        labels = np.asarray(bunch.target, dtype=np.int64)
        images.setflags(write=False)
        labels.setflags(write=False)
        _ARRAY_CACHE[key] = (images, labels)
    return _ARRAY_CACHE[key]


def _read_idx(spec: DatasetSpec, source: str, root_arg: Any) -> _Arrays:
    """The full official ``train`` (or ``test``: ``t10k``) arrays of an IDX data set."""
    name = spec.name
    root = _resolve_root(name, root_arg)
    folder = root / name
    prefix = "t10k" if source == "test" else "train"
    img_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    _require(name, [img_path, lab_path])
    key = (name, source, str(root))
    if key not in _ARRAY_CACHE:
        count = spec.sources[source]
        images = read_idx(img_path, expected_magic=_IDX_IMAGES_MAGIC)
        labels = read_idx(lab_path, expected_magic=_IDX_LABELS_MAGIC)
        if images.shape != (count, 28, 28):
            raise DataFormatError(f"{img_path}: images of shape {images.shape}, expected {(count, 28, 28)}")
        if labels.shape != (count,):
            raise DataFormatError(f"{lab_path}: {labels.shape[0]} labels, expected {count}")
        if labels.max() > 9:
            raise DataFormatError(f"{lab_path}: label {labels.max()} outside 0..9")
        _ARRAY_CACHE[key] = (images, labels)
    return _ARRAY_CACHE[key]


def _read_binarized(spec: DatasetSpec, source: str, root_arg: Any) -> _Arrays:
    """One of the files' splits (``train``, ``valid``, ``test``) of binarized MNIST, ``(N, 784)``, from the
    ``.npz`` file or else the original ``.amat`` text file."""
    name = spec.name
    root = _resolve_root(name, root_arg)
    folder = root / name
    npz = folder / _NPZ_NAME
    amat = folder / _AMAT_NAMES[source]
    if npz.exists():
        _verify(name, npz)
        path = npz
    elif amat.exists():
        _verify(name, amat)
        path = amat
    else:
        raise DataNotFoundError(
            _missing_message(name, [npz])
            + f"\n(Alternatively the original text file {amat}, "
            f"expected sha256 {_SHA256[(name, amat.name)]}.)"
        )
    key = (name, source, str(root))
    if key not in _ARRAY_CACHE:
        if path == npz:
            with np.load(npz, allow_pickle=False) as z:
                if source not in z.files:
                    raise DataFormatError(f"{npz}: no array {source!r} (holds {z.files})")
                arr = np.asarray(z[source])
            if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 784 or arr.max(initial=0) > 1:
                raise DataFormatError(
                    f"{npz}: array {source!r} has dtype {arr.dtype} and shape {arr.shape}, expected uint8 "
                    f"(N, 784) with values 0/1"
                )
            arr.setflags(write=False)
        else:
            arr = read_amat(amat)
        _ARRAY_CACHE[key] = (arr, None)
    return _ARRAY_CACHE[key]


def _load_spec(spec: DatasetSpec, split: str, root: Any, num_samples: int | None, seed: int) -> _Loaded:
    """A split of a data set: drawn (a toy set), or the ranges of its source arrays, concatenated."""
    where = _split_spec(spec, split)
    if spec.draw is not None:
        return spec.draw(where.size if num_samples is None else num_samples, _toy_generator(spec.name, split, seed))
    assert spec.read is not None
    pieces = [(spec.read(spec, source, root), slice(start, stop)) for source, start, stop in where.parts]

    def join(i: int) -> np.ndarray:  # a view where the split is one range (the copy comes in _images_to_tensors)
        parts = [arrays[i][rows] for arrays, rows in pieces]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    images, labels = join(0), join(1) if spec.has_labels else None
    n = _take(len(images), spec.name, split, num_samples)
    return _images_to_tensors(spec, images[:n], None if labels is None else labels[:n])


# --------------------------------------------------------------------------------------------------
# Toy sets
# --------------------------------------------------------------------------------------------------


def _toy_generator(name: str, split: str, seed: int) -> torch.Generator:
    """A local generator whose seed depends on (name, split, seed) only, stable across processes."""
    digest = hashlib.sha256(f"pyro_vae.datasets/{name}/{split}/{int(seed)}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def _draw_ring(n: int, g: torch.Generator) -> _Loaded:
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = z / 10 + z / z.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    angle = torch.atan2(x[:, 1], x[:, 0])  # in [-pi, pi]
    labels = ((angle + math.pi) / (2 * math.pi) * _RING_SECTORS).floor().long().clamp_(0, _RING_SECTORS - 1)
    return x.to(torch.float32), labels


class LinearGaussianParams(NamedTuple):
    r"""Parameters of the linear-Gaussian toy model :math:`x = W z + b + \sigma \varepsilon`.

    :ivar W: the loading matrix, shape ``(dim, latent_dim)``.
    :ivar b: the offset, shape ``(dim,)``.
    :ivar sigma: the observation noise standard deviation, a 0-dim tensor.
    """

    W: torch.Tensor
    b: torch.Tensor
    sigma: torch.Tensor

    @property
    def covariance(self) -> torch.Tensor:
        r"""The marginal covariance :math:`W W^\top + \sigma^2 I`, shape ``(dim, dim)``."""
        eye = torch.eye(self.W.shape[0], dtype=self.W.dtype, device=self.W.device)
        return self.W @ self.W.T + self.sigma**2 * eye


def linear_gaussian_params(
    dim: int = _LG_DIM, latent_dim: int = _LG_LATENT_DIM, dtype: torch.dtype = torch.float64
) -> LinearGaussianParams:
    r"""The fixed parameters of the ``linear-gaussian`` toy set.

    The values depend only on ``dim`` and ``latent_dim`` (never on a user seed or the global RNG):
    :math:`W_{ij} \sim \mathcal N(0, 1)` and :math:`b_i \sim \mathcal N(0, 1)` drawn once from a
    :class:`torch.Generator` with a fixed seed, and :math:`\sigma = 0.5`.

    .. math:: p(x) = \mathcal N(x;\, b,\, W W^\top + \sigma^2 I)

    :param dim: the data dimension ``D``.
    :param latent_dim: the latent dimension ``d``.
    :param dtype: floating dtype of the returned tensors.
    :returns: :class:`LinearGaussianParams` with ``W`` of shape ``(D, d)``, ``b`` of shape ``(D,)`` and a
        0-dim ``sigma``.
    """
    if int(dim) < 1 or int(latent_dim) < 1:
        raise ValueError(f"dim and latent_dim must be positive, got dim={dim}, latent_dim={latent_dim}")
    g = torch.Generator(device="cpu")
    g.manual_seed(20160613 + 1000 * int(dim) + int(latent_dim))
    W = torch.randn(int(dim), int(latent_dim), generator=g, dtype=torch.float64)
    b = torch.randn(int(dim), generator=g, dtype=torch.float64)
    sigma = torch.tensor(0.5, dtype=torch.float64)
    return LinearGaussianParams(W.to(dtype), b.to(dtype), sigma.to(dtype))


def linear_gaussian_log_prob(x: torch.Tensor, params: LinearGaussianParams) -> torch.Tensor:
    r"""The exact marginal log-density of the linear-Gaussian model.

    .. math:: \log p(x) = \log \mathcal N(x;\, b,\, W W^\top + \sigma^2 I)

    Computed with :class:`torch.distributions.MultivariateNormal` in the promoted dtype of ``x`` and the
    parameters (``float64`` with the default parameters) on the device of ``x``.

    :param x: data of shape ``(N, D)``.
    :param params: parameters from :func:`linear_gaussian_params`.
    :returns: log-densities of shape ``(N,)``.
    """
    D = params.W.shape[0]
    if x.shape[-1] != D:
        raise ValueError(f"x has last dimension {x.shape[-1]}, but the model has dim={D}")
    dtype = torch.promote_types(x.dtype, params.W.dtype)
    p = LinearGaussianParams(*(t.to(device=x.device, dtype=dtype) for t in params))
    mvn = torch.distributions.MultivariateNormal(loc=p.b, covariance_matrix=p.covariance)
    return mvn.log_prob(x.to(dtype))


def _draw_linear_gaussian(n: int, g: torch.Generator) -> _Loaded:
    params = linear_gaussian_params()
    z = torch.randn(n, params.W.shape[1], generator=g, dtype=torch.float64)
    eps = torch.randn(n, params.W.shape[0], generator=g, dtype=torch.float64)
    x = z @ params.W.T + params.b + params.sigma * eps
    return x.to(torch.float32), torch.zeros(n, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------

_MNIST_SPLITS = {"train": _split(("train", 0, 60000)), "valid": _split(("train", 50000, 60000)),
                 "test": _split(("test", 0, 10000)), "train-without-valid": _split(("train", 0, 50000))}
_TOY_SPLITS = {"train": SplitSpec(10000), "valid": SplitSpec(1000), "test": SplitSpec(1000)}


def _idx_spec(name: str, *sha256: str) -> DatasetSpec:
    """An MNIST-like set: four IDX files (train and t10k images and labels, with these checksums), grey bytes."""
    files = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    return DatasetSpec(name, (1, 28, 28), _MNIST_SPLITS, values="[0, 1]", scale=255.0, read=_read_idx,
                       sources={"train": 60000, "test": 10000}, files=dict(zip(files, sha256, strict=True)))


#: Every data set's :class:`DatasetSpec`, by name (checksums from ``shared/data/README.md``).
SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec(
        "digits", (1, 8, 8), values="[0, 1]", scale=16.0, read=_read_digits, sources={"all": 1797},
        splits={"train": _split(("all", 0, 1500)), "valid": _split(("all", 1200, 1500)),
                "test": _split(("all", 1500, 1797)), "train-without-valid": _split(("all", 0, 1200))}),
    _idx_spec("mnist", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
              "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
              "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
              "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    _idx_spec("fashion-mnist", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
              "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
              "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
              "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    DatasetSpec(
        "binarized-mnist", (1, 28, 28), values="{0, 1}", has_labels=False, read=_read_binarized,
        sources={"train": None, "valid": None, "test": None},
        splits={"train": _split(("train", 0, 50000)), "valid": _split(("valid", 0, 10000)),
                "test": _split(("test", 0, 10000)), "train+valid": _split(("train", 0, 50000), ("valid", 0, 10000))},
        files={_NPZ_NAME: "350243cb824d66d022e0c3e87cac231231668817ff03f5f6d7b6533017d56b4b",
               _AMAT_NAMES["train"]: "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
               _AMAT_NAMES["valid"]: "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
               _AMAT_NAMES["test"]: "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"}),
    DatasetSpec("ring", (2,), _TOY_SPLITS, values="real", draw=_draw_ring),
    DatasetSpec("linear-gaussian", (_LG_DIM,), _TOY_SPLITS, values="real", draw=_draw_linear_gaussian),
)}

#: Valid splits of every data set and their number of examples (for the toy sets: the default size); read from
#: :data:`SPECS`.
SPLITS: dict[str, dict[str, int]] = {name: {split: s.size for split, s in spec.splits.items()}
                                     for name, spec in SPECS.items()}

#: Every data set name and its loader ``(split, root, num_samples, seed) -> (x, labels or None)``.
DATASETS: dict[str, Callable[[str, Any, int | None, int], _Loaded]] = {name: partial(_load_spec, spec)
                                                                       for name, spec in SPECS.items()}

#: The expected sha256 of every known file, keyed by ``(data set, file name)``: an index of the specs' files.
_SHA256: dict[tuple[str, str], str] = {(name, file): sha for name, spec in SPECS.items()
                                       for file, sha in spec.files.items()}


def load(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    return_labels: bool = False,
    num_samples: int | None = None,
    seed: int = 0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Load a split of a data set as an in-memory tensor (see the module docstring for names and splits).

    :param name: one of ``digits``, ``mnist``, ``fashion-mnist``, ``binarized-mnist``, ``ring``,
        ``linear-gaussian`` (the keys of :data:`DATASETS`).
    :param split: one of ``SPLITS[name]``, e.g. ``train``, ``valid``, ``test``, ``train-without-valid``
        (``train+valid`` for ``binarized-mnist``).
    :param root: the folder holding ``mnist/``, ``fashion-mnist/``, ``binarized-mnist/``; defaults to the
        ``PYRO_VAE_DATA`` environment variable. Ignored by ``digits`` and the toy sets.
    :param return_labels: also return the labels (digit or class ``0..9``; ring sector ``0..7``; zeros for
        ``linear-gaussian``). ``binarized-mnist`` has none.
    :param num_samples: for the toy sets, the number of points to draw (default: ``SPLITS[name][split]``); for
        the other sets, keep only the first ``num_samples`` examples of the split (must not exceed its size).
    :param seed: seed of the toy sets (each split uses its own generator derived from it); ignored otherwise.
    :returns: ``x``, a new ``float32`` tensor of shape ``(N, *event_shape(name))`` (images in ``[0, 1]``,
        binarized MNIST exactly 0/1, toy sets real-valued); with ``return_labels=True`` the pair
        ``(x, labels)`` where ``labels`` is an ``int64`` tensor of shape ``(N,)``.
    :raises ValueError: for an unknown name or split, bad ``num_samples``, or labels asked of
        ``binarized-mnist``.
    :raises DataNotFoundError: if no data folder is given or a file is missing.
    :raises DataChecksumError: if a file's sha256 is not the known one.
    """
    spec = _spec(name)
    _split_spec(spec, split)
    if return_labels and not spec.has_labels:
        raise ValueError(
            f"data set {name!r} has no labels (the fixed binarization of Larochelle & Murray was published "
            f"without them); call load({name!r}, ...) with return_labels=False, or use 'mnist' for labels"
        )
    if num_samples is not None:
        num_samples = whole_number(num_samples, "num_samples (a positive integer or None)")
    x, labels = _load_spec(spec, split, root, num_samples, int(seed))
    if return_labels:
        assert labels is not None
        return x, labels
    return x


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Dynamic binarization: an independent Bernoulli draw of every pixel, :math:`b \sim \mathrm{Bern}(x)`.

    Meant to be applied to each mini-batch on its device (a fresh draw every time, as in Burda et al. 2016).

    :param x: probabilities in ``[0, 1]``, any shape, floating dtype.
    :param generator: optional generator on the device of ``x``, for reproducible draws.
    :returns: a tensor of the shape, dtype and device of ``x`` with values exactly 0 and 1.
    """
    if not torch.is_floating_point(x):
        raise ValueError(f"binarize needs a floating tensor of probabilities, got dtype {x.dtype}")
    return torch.bernoulli(x, generator=generator)


def from_array(array: Any, name: str = "array") -> torch.Tensor:
    """Turn a user's array (numpy array, tensor or nested list) of examples into a ``float32`` tensor.

    The first dimension indexes examples; the rest is the event shape. A tensor keeps its device; anything
    else lands on the CPU. The result never shares memory with the input.

    :param array: the data, shape ``(N, *event_shape)`` with ``N >= 1``.
    :param name: how to call the data in error messages.
    :returns: a ``float32`` tensor of shape ``(N, *event_shape)``.
    :raises ValueError: for a non-numeric dtype (strings, objects, dates, complex numbers), a 0-dimensional or
        empty array, or values that are NaN or infinite (also after conversion to ``float32``).
    """
    if isinstance(array, torch.Tensor):
        t = array.detach()
        if t.is_complex():
            raise ValueError(f"{name}: complex tensors are not supported (dtype {t.dtype})")
        dtype_desc = str(t.dtype)
    else:
        try:
            arr = np.asarray(array)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}: cannot be turned into an array ({e})") from e
        if arr.dtype.kind not in "biuf":
            raise ValueError(
                f"{name}: non-numeric dtype {arr.dtype} (kind {arr.dtype.kind!r}); expected booleans, "
                f"integers or floats"
            )
        dtype_desc = str(arr.dtype)
        if arr.dtype.kind == "f" and arr.size and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ValueError(f"{name}: {bad} NaN or infinite value(s) (dtype {dtype_desc})")
        if arr.dtype.kind == "f" and arr.size and float(np.abs(arr).max()) > float(np.finfo(np.float32).max):
            raise ValueError(f"{name}: value(s) too large for float32 (dtype {dtype_desc})")
        t = torch.from_numpy(arr.astype(np.float32))  # astype copies
    if t.dim() == 0:
        raise ValueError(f"{name}: a 0-dimensional value; expected shape (N, *event_shape)")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty array of shape {tuple(t.shape)}; expected at least one example")
    if torch.is_floating_point(t) and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: {bad} NaN or infinite value(s) (dtype {dtype_desc})")
    out = t.to(torch.float32, copy=True)
    if not torch.isfinite(out).all():
        raise ValueError(f"{name}: value(s) too large for float32 (dtype {dtype_desc})")
    return out
