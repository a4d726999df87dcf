"""``python -m npas_env`` runs the ``npas`` command line."""

import sys

from npas_env.cli import main

sys.exit(main())
