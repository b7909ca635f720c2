"""``pyro_vae.train.callbacks``: what mutation testing (issue 34, ``docs/reliability.md``) found unpinned. The epoch's
line (the progress line off a terminal and the run's ``train.log``), the progress bar on a terminal, the CSV file
of a resumed run, and the order and arguments in which ``CallbackList`` calls its callbacks."""

from __future__ import annotations

import io

import torch

from pyro_vae.train import CallbackList, CSVLogger
from pyro_vae.train.callbacks import Callback, Progress, epoch_line


def test_the_epoch_line_says_what_the_record_holds():
    record = {"epoch": 3, "loss": 1.23456}
    assert epoch_line(record) == "epoch 3: loss 1.235"
    assert epoch_line(record, 10) == "epoch 3/10: loss 1.235"
    record.update(val_elbo=-2.0, seconds=1.5)
    assert epoch_line(record, 10) == "epoch 3/10: loss 1.235, valid ELBO -2.000"  # no speed without images/s
    record["images_per_second"] = 12345.6
    assert epoch_line(record, 10) == "epoch 3/10: loss 1.235, valid ELBO -2.000 (1.5 s, 12,346 images/s)"
    del record["seconds"]
    assert epoch_line(record) == "epoch 3: loss 1.235, valid ELBO -2.000"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_line_per_epoch_off_a_terminal_and_a_bar_on_one():
    stream = io.StringIO()
    progress = Progress(total_steps=40, epochs=2, stream=stream)
    assert progress.bar is None
    progress.on_step_end(0, 0, 20, torch.tensor(10.0), 20)
    progress.on_epoch_end({"epoch": 1, "loss": 0.5})
    assert stream.getvalue() == "epoch 1/2: loss 0.500\n"
    terminal = _Terminal()
    progress = Progress(total_steps=40, epochs=2, stream=terminal)
    assert progress.bar is not None and progress.bar.total == 40 and progress.bar.desc == "training"
    for step in range(20):
        progress.on_step_end(1, step, 20, torch.tensor(10.0 + step), 20)  # summed loss of 20 datapoints
    assert progress.bar.n == 20
    assert progress.bar.postfix == "epoch=2, loss=0.50"  # set at step 0 (then every 20 steps): per datapoint
    progress.on_epoch_end({"epoch": 2, "loss": 0.5})
    progress.on_train_end([])
    assert "training" in terminal.getvalue() and "step" in terminal.getvalue()
    assert "epoch 2/2" not in terminal.getvalue()  # the bar, not the line
    assert Progress(total_steps=0, epochs=1, stream=_Terminal()).bar is None


def test_a_resumed_runs_csv_keeps_the_earlier_epochs_and_a_new_one_starts_afresh(tmp_path):
    path = tmp_path / "logs" / "nested" / "metrics.csv"  # its folders are created
    first = CSVLogger(path)
    for epoch in (1, 2, 3):
        first.on_epoch_end({"epoch": epoch, "loss": float(epoch), **({"val_iwae": -1.0} if epoch == 2 else {})})
    assert path.read_text() == "epoch,loss,val_iwae\n1,1.0,\n2,2.0,-1.0\n3,3.0,\n"
    resumed = CSVLogger(path, append=True)  # resumed from the checkpoint of epoch 2: epoch 3 again
    resumed.on_epoch_end({"epoch": 3, "loss": 30.0})
    assert path.read_text() == "epoch,loss,val_iwae\n1,1.0,\n2,2.0,-1.0\n3,30.0,\n"
    fresh = CSVLogger(path)
    fresh.on_epoch_end({"epoch": 1, "loss": 5.0})
    assert path.read_text() == "epoch,loss\n1,5.0\n"


class _Recorder(Callback):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def on_epoch_end(self, record):
        self.calls.append((self.name, record["epoch"]))


class _Stepper(_Recorder):
    def on_step_end(self, epoch, step, steps, loss, size):
        self.calls.append((self.name, epoch, step, steps, float(loss), size))


def test_the_callback_list_calls_in_order_with_every_argument():
    calls = []
    callbacks = CallbackList([_Stepper("a", calls), _Recorder("quiet", calls)])
    callbacks.prepend(_Stepper("progress", calls))
    callbacks.on_step_end(1, 2, 3, torch.tensor(4.0), 5)
    assert calls == [("progress", 1, 2, 3, 4.0, 5), ("a", 1, 2, 3, 4.0, 5)]  # only those that step, first first
    calls.clear()
    assert callbacks.on_epoch_end({"epoch": 7}) is False
    assert calls == [("progress", 7), ("a", 7), ("quiet", 7)]
