"""``python -m mlplab``."""

import sys

from mlplab.cli import main

if __name__ == "__main__":
    sys.exit(main())
