"""``pyro_vae.io``, the floor every writer stands on: what mutation testing (issue 34, ``docs/reliability.md``) found
unpinned. The run folder's lock is released when the last holder leaves and keeps out other writers until then;
temporaries are named so that a resumed run clears those a killed one left; logs and JSON files read as written;
checksums keep their format (files written earlier still verify) and see swapped tensors; a failed write says why."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os

import pytest
import torch

from pyro_vae.io import RunLock, append_line, atomic_write, describe_write_error, tensor_checksum, write_json


def _locked(folder) -> bool:
    """Whether a writer holds ``folder/.lock`` (a second open file description is refused by ``flock``, in this
    process too, as another process would be)."""
    fd = os.open(folder / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_run_lock_is_held_by_the_outermost_holder_and_released_after_it(tmp_path):
    folder, other = tmp_path / "runs" / "new" / "run", tmp_path / "other"
    old = os.umask(0o002)
    try:
        with RunLock(folder):  # creates the missing folders
            assert folder.is_dir() and _locked(folder)
            assert (folder / ".lock").stat().st_mode & 0o777 == 0o664
            with RunLock(folder):  # re-entrant within the process
                with RunLock(other):  # another folder: its own lock
                    assert _locked(other)
                assert not _locked(other)
            assert _locked(folder)  # the inner exit leaves the outer holder's lock
        assert not _locked(folder)
        with RunLock(folder):  # taken again after its release
            assert _locked(folder)
        assert not _locked(folder)
    finally:
        os.umask(old)


def test_an_atomic_writes_temporary_is_in_the_folder_and_named_for_the_cleanup(tmp_path):
    """While a file is written its temporary is ``NAME.<random>.tmp`` beside it (what ``prepare_checkpoint_dir``
    clears after a killed run; a temporary elsewhere would not be renamed atomically), and gone afterwards."""
    seen = []

    def write(f):
        seen.extend(p.name for p in tmp_path.iterdir())
        f.write(b"new")

    atomic_write(tmp_path / "checkpoint.pt", write)
    assert len(seen) == 1 and seen[0].startswith("checkpoint.pt.") and seen[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"new"


def test_append_line_writes_each_line_once_with_the_umasks_permissions(tmp_path):
    log = tmp_path / "train.log"
    old = os.umask(0o027)
    try:
        append_line(log, "first\n")
        append_line(log, "second")
    finally:
        os.umask(old)
    assert log.read_text() == "first\nsecond\n"
    assert log.stat().st_mode & 0o777 == 0o640


def test_write_json_is_indented_and_sorted(tmp_path):
    obj = {"b": 1, "a": {"d": [1, 2], "c": None}}
    write_json(obj, tmp_path / "config.json")
    assert (tmp_path / "config.json").read_text() == json.dumps(obj, indent=2, sort_keys=True) + "\n"


def test_tensor_checksum_keeps_its_format_and_sees_swapped_tensors():
    """The digest of a fixed dict is pinned (checkpoints and saved models written before still verify), and two
    tensors of one shape swapped between names change it."""
    w, b = torch.arange(6.0).reshape(2, 3), torch.zeros(0)
    by_hand = hashlib.sha256()  # the names in sorted order, each as "/path:dtype:shape" then its bytes
    for name, t in (("/pair/module/b", b), ("/pair/module/w", w)):
        by_hand.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        by_hand.update(t.numpy().tobytes())
    digest = tensor_checksum({"pair": {"module": {"w": w, "b": b}}})
    assert digest == by_hand.hexdigest() == "63127a0fed49cb47163540564774efe483550d4242dd56f7552e59d0706dc52a"
    a, b = torch.zeros(3), torch.ones(3)
    assert tensor_checksum({"a": a, "b": b}) != tensor_checksum({"a": b, "b": a})


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk quota is exceeded"),
    (errno.EROFS, "the file system is read-only"), (errno.EACCES, "the folder is not writable"),
    (errno.EPERM, "the folder is not writable"), (errno.EIO, "Input/output error"),
])
def test_a_failed_write_says_why(code, words):
    assert describe_write_error(OSError(code, os.strerror(code))) == words


def test_torchs_failed_write_is_described_as_a_full_disk():
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 46 vs 0\nmore")
    assert describe_write_error(error) == ("the write failed ([enforce fail at inline_container.cc:672] . unexpected "
                                           "pos 46 vs 0): the disk is probably full")


def test_a_stop_hidden_behind_a_failed_write_is_raised_as_the_stop(tmp_path):
    """A Ctrl-C or SIGTERM inside ``write`` may come out as the writer's own error (torch's "unexpected pos"),
    raised while handling it, however deep: ``atomic_write`` raises the stop; the old file stays, no temporary."""
    (tmp_path / "f").write_bytes(b"old")

    def interrupted(f):
        f.write(b"half")
        try:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ValueError("the writer's cleanup failed") from None
        except ValueError:
            raise RuntimeError("unexpected pos 46 vs 0") from None

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "f", interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["f"] and (tmp_path / "f").read_bytes() == b"old"

    def failed(f):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos 46 vs 0") from None

    with pytest.raises(RuntimeError, match="unexpected pos"):  # no stop behind it: the error as it is
        atomic_write(tmp_path / "f", failed)
