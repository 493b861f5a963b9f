"""A worker that ignores SIGTERM, for the supervisor's SIGKILL after the grace period (test_supervisor.py).

It binds nothing: run it without --bind. It says "stubborn: ignoring SIGTERM" once it does.
"""

import signal

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("stubborn: ignoring SIGTERM", flush=True)
    while True:
        signal.pause()
