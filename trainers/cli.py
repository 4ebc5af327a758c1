"""What every command-line entry point shares: one logging set-up and one error path.

    sys.exit(cli.run(main))     # in each entry script

A ``UserError`` (a bad config value, unusable data, a model that cannot be resolved) ends the
command with one line on stderr naming the value and the fix, and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator

from trainers.errors import UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries that log every metric or request at INFO; the commands print their own summaries.
QUIET_LOGGERS = (
    "sentence_transformers.sentence_transformer.evaluation.information_retrieval",
    "httpx",
    "tensorboardX",  # Tune's TensorBoard logger: a line per metric name with an '@' in it
)


def setup_logging(level: int = logging.INFO) -> None:
    """The one log format of every command (idempotent)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a UserError becomes one line on stderr and exit code 2, and Ctrl-C
    or SIGTERM ends it through its ``finally`` clean-up with exit code 130 or 143, also when
    SIGINT was inherited as ignored (``nohup ... &``: see ``terminate_as_interrupt``)."""
    try:
        with terminate_as_interrupt():
            return main(list(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"\nstopped by {signal.Signals(exit_code(stop) - 128).name}", file=sys.stderr)
        return exit_code(stop)


def exit_now(code: int) -> None:
    """Flush what was printed and logged, then end the process without the interpreter's
    slow finalisation; only for a command that has already cleaned up after itself."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Stopped(KeyboardInterrupt):
    """A stop signal raised the way Ctrl-C is (so every ``finally`` clean-up runs), keeping
    which signal it was: the command exits 128 + signum (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """The shell's exit code for a command ended by ``interrupt``: 130 for Ctrl-C."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM (docker stop, systemd, Kubernetes) and SIGINT (Ctrl-C, kill
    -INT) stop the command as a KeyboardInterrupt, so its ``finally`` clean-up runs.

    Both handlers are set here, not left to Python: a process started in the background by a
    non-interactive shell (``nohup ... &``, a CI script) inherits SIGINT as *ignored*, and
    Python then installs no KeyboardInterrupt for it (a server in CI ignored SIGINT so, for
    60 s, until the test killed it). ``ray.init`` installs a SIGTERM handler of its own that
    exits without the clean-up: enter this block after Ray has started.
    """

    def interrupt(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def bound_the_stop(seconds: float, processes: list, code: int = 0, note: str = "") -> None:
    """A stop that has begun ends within ``seconds``, whatever it waits on.

    If this process still runs then, the stack of every thread goes to stderr (where it hung,
    for the bug report), ``processes`` are killed and the process exits with ``code`` after
    printing ``note``: the stop asked for is done, and nothing it started is left. Normally
    the stop ends first and this timer dies with the process.
    """
    import faulthandler
    import threading

    def overdue() -> None:
        print(f"\nthe stop took over {seconds:g} s: ending it; where it waited:", file=sys.stderr)
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        # Overdue already: kill at once (giving them time to go overran a CI run's deadline).
        reap(processes, timeout_s=0.0)
        if note:
            print(note, flush=True)
        exit_now(code)

    timer = threading.Timer(seconds, overdue)
    timer.daemon = True
    timer.start()


def ignore_stop_signals() -> None:
    """Clean-up has begun: a second Ctrl-C or SIGTERM must not leave it half done."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def ray_descendants() -> list:
    """The live processes of the Ray this process started (raylet, GCS, workers, agents, the
    HAProxy of Serve), as psutil.Process objects; other children are left alone."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(process.cmdline())
            if process.name() in RAY_PROCESS_NAMES or "/ray/" in command or "ray::" in command:
                # and what Ray's processes started in turn (W&B's service, HAProxy...)
                for member in [process, *process.children(recursive=True)]:
                    found[member.pid] = member
    return list(found.values())


RAY_PROCESS_NAMES = {"raylet", "gcs_server", "haproxy"}


def reap(processes: list, timeout_s: float = 0.5) -> list[str]:
    """Wait up to ``timeout_s`` for ``processes`` to end, then kill the ones left.

    Take the list *before* stopping what started them: a process whose parent is gone is no
    longer a descendant (Ray's agents outlive their raylet by seconds, HAProxy indefinitely).
    Returns what had to be killed, for the log.
    """
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    killed = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(" ".join(process.cmdline())[:80] or process.name())
            process.kill()
    psutil.wait_procs(alive, timeout=max(timeout_s, 0.3))  # SIGKILL: gone within milliseconds
    return killed


# From Ctrl-C or SIGTERM to the end of the process, at most: within the 5 s a service manager
# gives before it kills (python serve/app.py, python sweeps/run.py).
STOP_DEADLINE_S = 4.0


def stop_ray(shutdown: Callable[[], None], deadline_s: float | None = None) -> list[str]:
    """Stop the private Ray this process started, leaving none of its processes behind.

    ``shutdown`` is ``ray.shutdown`` (trainers never imports ray). Whatever outlives its
    raylet (Ray's agents, Serve's HAProxy, a trial still training) gets ``reap``'s half second,
    then is killed: waiting 2 s made a stopped sweep take up to 4 s. ``deadline_s``: if the
    process still runs then, what is left is killed and it exits (``bound_the_stop``).
    Returns what had to be killed, for the log.
    """
    processes = ray_descendants()
    if deadline_s is not None:
        bound_the_stop(deadline_s, processes)
    shutdown()
    return reap(processes)
