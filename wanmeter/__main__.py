"""`python -m wanmeter ...` (see wanmeter/cli.py)."""
import sys

from .cli import main

sys.exit(main())
