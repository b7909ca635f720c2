"""The whole-call mode of ``benchmarks/train_mnist.py`` runs (``--smoke-test``), so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_mnist_times_whole_fit_calls_with_the_load_average(data_root: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_mnist.py"), "--smoke-test", "--whole-calls",
                           "--threads", "2,1", "--data-root", str(data_root)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT / "benchmarks")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # the default arguments (the headline) first, then fit at the references' thread count; at 2 threads, then 1
    assert [(r["threads"], r["numerator"], r["fit_arguments"]) for r in records] == [
        (t, impl, args) for t in (2, 1) for args in ("defaults", "T threads") for impl in ("library", "user_pair")]
    for r in records:
        assert r["metric"] == "whole_call_ratio" and r["rounds"] == 2 and r["call_epochs"] == 1
        if r["fit_arguments"] == "T threads":
            assert r["fit_threads"] == [r["threads"]]
        for clock in ("wall", "cpu"):
            for ref in ("reference", "reference_fused"):
                q1, q3 = r[f"ratio_{clock}_vs_{ref}_quartiles"]
                assert 0 < q1 <= r[f"ratio_{clock}_vs_{ref}"] <= q3
        assert len(r["load_average_per_round"]) == 2
    assert "| load average (1 min) |" in proc.stdout and "defaults (`auto`: " in proc.stdout
