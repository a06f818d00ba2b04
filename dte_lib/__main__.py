"""``python -m dte_lib`` is the ``dte`` command."""
import sys

from .cli import main

sys.exit(main())
