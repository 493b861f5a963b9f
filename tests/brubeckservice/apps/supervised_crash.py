"""A service app that fails as it starts, for the supervisor's back-off (test_supervisor.py)."""

import sys

if __name__ == "__main__":
    sys.exit("supervised_crash: failing at start, on purpose")
