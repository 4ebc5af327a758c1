import os
import signal

import pytest

from trainers import cli


def test_sigterm_inside_terminate_as_interrupt_runs_the_clean_up_and_exits_143():
    """SIGTERM during a sweep's finish ends the command the way Ctrl-C does (its `finally`
    runs) but with SIGTERM's exit code, 143, not Ctrl-C's 130: service managers read it."""
    before = signal.getsignal(signal.SIGTERM)
    cleaned = False
    with pytest.raises(KeyboardInterrupt) as caught:
        with cli.terminate_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0)  # a bytecode boundary: the handler runs here
            finally:
                cleaned = True
    assert cleaned
    assert cli.exit_code(caught.value) == 128 + signal.SIGTERM
    assert cli.exit_code(KeyboardInterrupt()) == 130  # a plain Ctrl-C
    assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
