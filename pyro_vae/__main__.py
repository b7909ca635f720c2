"""``python -m pyro_vae``: the ``pyro-vae`` command line (see :mod:`pyro_vae.cli`)."""

import sys

from ._console import run

sys.exit(run())
