"""The names of a run folder's files, in one place (a leaf: the command line can use them before it imports
torch), and the run's test data as its configuration names them (:func:`run_test_data`: one definition for the
figures and the command line; it imports the data sets only when called)."""

from __future__ import annotations

import os
from typing import Any

PROG = "pyro-vae"
CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
#: the folder the trained model is saved into at the end of training
MODEL_DIR = "model"
TEST_METRICS_NAME = "test_metrics.json"

__all__ = ["PROG", "CONFIG_NAME", "CHECKPOINT_NAME", "METRICS_NAME", "MODEL_DIR", "TEST_METRICS_NAME", "run_test_data"]


def run_test_data(config: dict[str, Any], num: int | None = None, *, seed: int = 0, split: str | None = None,
                  data_root: str | os.PathLike[str] | None = None, labels: bool = False,
                  device: Any = None) -> tuple[Any, Any]:
    """The test data of a run: the split its ``config.json`` names (default ``test``), the first ``num``
    datapoints, binarized once when the run trained on binarized data.

    The binarization is drawn on the CPU from ``torch.Generator().manual_seed(seed)`` before the data move to
    ``device``, so the same ``seed`` gives the same binary images on every device (figures, ``evaluate`` and
    ``reconstruct`` score the same data).

    :param config: the run's configuration (``pyro_vae.runs.read_config``): ``dataset``, ``data_root``,
        ``splits``, ``training.binarize``.
    :param num: keep the first ``num`` datapoints (all when None).
    :param seed: seeds the binarization.
    :param split: another split of the data set (default: the run's test split).
    :param data_root: the data folder (default: the run's, else ``$PYRO_VAE_DATA``).
    :param labels: also return the labels (None for a data set without them).
    :param device: where to put the data (default: the CPU).
    :returns: ``(x, labels)``: ``x`` of shape ``(num, *event_shape)``; ``labels`` ``(num,)`` or None (always None
        unless ``labels=True``).
    :raises pyro_vae.datasets.DataNotFoundError: when the data files are not found.
    """
    import torch

    from . import datasets

    name = config["dataset"]
    root = data_root if data_root is not None else config.get("data_root")
    split = split or config.get("splits", {}).get("test", "test")
    x = y = None
    if labels:
        try:
            x, y = datasets.load(name, split, root=root, return_labels=True)
        except ValueError:  # a data set without labels (binarized-mnist)
            pass
    if x is None:
        x = datasets.load(name, split, root=root)
    if num is not None:
        x, y = x[: int(num)], None if y is None else y[: int(num)]
    if config.get("training", {}).get("binarize"):
        x = datasets.binarize(x, torch.Generator().manual_seed(int(seed)))
    if device is not None:
        x = x.to(device)
    return x, y
