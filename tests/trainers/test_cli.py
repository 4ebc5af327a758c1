import os
import signal

import pytest

from trainers import cli


def test_sigint_stops_the_block_even_when_inherited_as_ignored():
    """A server started by `nohup ... &` or a CI script inherits SIGINT as ignored; inside the
    block SIGINT still stops it (exit 130), and the ignored disposition comes back after."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            with cli.terminate_as_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                signal.sigtimedwait([], 0)  # a bytecode boundary: the handler runs here
        assert cli.exit_code(caught.value) == 130
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


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


def test_a_stop_that_hangs_ends_at_its_deadline_and_says_where_it_waited(tmp_path):
    """bound_the_stop: a hung stop still ends at the deadline with the exit code and note it was
    given, kills the processes it was given, and prints every thread's stack (where it hung)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    script = (
        "import threading, psutil\n"
        "from trainers import cli\n"
        f"cli.bound_the_stop(1.0, [psutil.Process({child.pid})], 143, 'resume with --resume')\n"
        "threading.Event().wait()  # a stop that never returns\n"
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
        killed = child.wait(timeout=5)  # by the deadline: nothing else kills it
    finally:
        child.kill()
    assert done.returncode == 143, done.stderr  # the code it was given: SIGTERM's, for a sweep
    assert "resume with --resume" in done.stdout
    assert took < 10
    assert "the stop took over 1 s" in done.stderr
    assert "in wait" in done.stderr  # the frame it hung in
    assert killed == -signal.SIGKILL


COMMANDS_UNDER_NOHUP = {
    # a training run long enough to be stopped in its epochs
    "python -m trainers.train": lambda model, data, out: [
        "-m", "trainers.train", "--model", model, "--data", data, "--group_column", "source",
        "--epochs", "100", "--max_seq_length", "32", "--eval_size", "60",
        "--eval_max_queries", "null", "--max_pairs", "null", "--output_dir", out,
    ],
    # a benchmark: eval_speed as the README runs it (the bundled MiniLM: minutes of encoding)
    "python benchmarks/eval_speed.py": lambda model, data, out: [
        "benchmarks/eval_speed.py", "--results-dir", out,
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(COMMANDS_UNDER_NOHUP))
def test_commands_stop_on_sigint_inherited_as_ignored(
    command, tiny_model_path, debian_sample_file, tmp_path
):
    """`nohup python -m trainers.train ... &` (or a CI script's `&`) starts the command with
    SIGINT ignored; kill -INT must still stop it, through its clean-up, with exit code 130."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    argv = COMMANDS_UNDER_NOHUP[command](
        str(tiny_model_path), str(debian_sample_file), str(tmp_path)
    )
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        time.sleep(8)  # into its work (imports, model, data): past the interpreter's own start
        assert proc.poll() is None, f"{command} ended before the signal:\n{proc.stdout.read()}"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    output = proc.stdout.read()
    assert code == 130, f"{command} exit {code}:\n{output[-3000:]}"
    assert "stopped by SIGINT" in output
    assert took < 15
