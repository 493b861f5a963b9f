"""`python -m brubeckservice COMMAND ...`: the same as the `brubeck-service` command (brubeckservice.cli)."""

import sys

from brubeckservice.cli import main

if __name__ == "__main__":
    sys.exit(main())
