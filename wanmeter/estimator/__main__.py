"""`python -m wanmeter.estimator estimate|gpus ...` (standalone entry of the estimator CLI)."""
import sys

from .cli_estimate import main

sys.exit(main())
