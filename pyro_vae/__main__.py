"""``python -m pyro_vae``: the ``pyro-vae`` command line (see :mod:`pyro_vae.cli`)."""

import sys

from .cli import main

sys.exit(main())
