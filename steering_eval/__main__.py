"""``python -m steering_eval``: see steering_eval.cli."""
import sys

from .cli import main

sys.exit(main())
