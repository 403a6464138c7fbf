"""The `ablation` command's first step, outside the package on purpose.

A console script imports its entry point's module before calling it, and importing
anything inside `ablation` runs the package first. A Ctrl-C (or SIGTERM) in that moment
would print a traceback of the import machinery. This module imports nothing at load
time: it catches an interrupt during the package's import, then hands over to
`ablation.cli.main`, which installs its own handling before anything heavy loads.
"""

import signal
import sys


def _stop(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # SIGTERM as Ctrl-C, already
        signal.signal(signal.SIGTERM, _stop)
    try:
        from ablation.cli import main as cli
    except KeyboardInterrupt:
        print("ablation: interrupted", file=sys.stderr)
        return 130
    return cli()


if __name__ == "__main__":
    sys.exit(main())
