"""The names of a run folder's files, in one place (a leaf with no imports, so the command line can use them
before it imports torch)."""

PROG = "pyro-vae"
CONFIG_NAME = "config.json"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
#: the folder the trained model is saved into at the end of training
MODEL_DIR = "model"
TEST_METRICS_NAME = "test_metrics.json"
#: the run's log: what train printed (the folder, the data, each epoch, the test metrics), appended on resume
LOG_NAME = "train.log"

__all__ = ["PROG", "CONFIG_NAME", "CHECKPOINT_NAME", "METRICS_NAME", "MODEL_DIR", "TEST_METRICS_NAME", "LOG_NAME"]
