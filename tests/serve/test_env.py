"""serve/env.py: the settings Serve must find when its Ray starts (shell exports, in-process)."""

from __future__ import annotations

import os
import subprocess
import sys

from serve import env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_exports_give_every_default_to_a_shell_and_keep_what_the_environment_sets():
    base = {k: v for k, v in os.environ.items() if k not in env.defaults()}
    script = f'eval "$({sys.executable} -m serve.env)"; ' + "; ".join(
        f'echo "{name}=${name}"' for name in env.defaults()
    )
    run = subprocess.run(
        ["bash", "-c", script],
        env={**base, "RAY_SERVE_HAPROXY_NBTHREAD": "3"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    seen = dict(line.split("=", 1) for line in run.stdout.splitlines())
    expected = {**env.defaults(), "RAY_SERVE_HAPROXY_NBTHREAD": "3"}
    # The retry policy has spaces: it must reach the shell as one value, quoted.
    assert seen == expected


def test_apply_sets_only_what_is_unset(monkeypatch):
    for name in env.defaults():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    env.apply()
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert os.environ["RAY_SERVE_HAPROXY_RETRY_ON"] == "conn-failure empty-response junk-response"


def test_haproxy_threads_follow_the_cores(monkeypatch):
    for cores, threads in ((1, "1"), (2, "1"), (8, "2"), (16, "4"), (96, "4")):
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert env.defaults()["RAY_SERVE_HAPROXY_NBTHREAD"] == threads
