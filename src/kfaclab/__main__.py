"""`python -m kfaclab`: the `kfaclab` command, where the environment's scripts are not on PATH."""

import sys

from kfaclab.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
