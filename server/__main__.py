"""``python -m server``, and the ``aiotusd`` command (see setup.cfg)."""

import signal
import sys
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signum)


def run() -> int:
    """The command's status. A signal before the server has its own handlers (while
    Python imports aiohttp, say) is one line and status 128 + its number, not a
    traceback; SIGTERM too, which would otherwise end the process without a word."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        from .cli import main

        return main()
    except KeyboardInterrupt as exc:
        signum = exc.args[0] if exc.args else signal.SIGINT
        print(f"aiotusd: error: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(run())
