"""`ray up` -> sweep -> serve -> `ray down` for real, on a local-provider twin of cluster.yaml.

Every step is a command of the README's "On a GPU cluster" section, run with Ray's own CLI
against the twin (tests/cluster/twin.py): the head is this machine over ssh to 127.0.0.1.
Differences from the cloud, each forced by this machine: no docker (a venv plays the image),
the "bucket" is a file:// folder, the smoke sweep's trials ask for no GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from serve import env as serve_env
from tests.cluster import twin

pytestmark = pytest.mark.slow

REPO = twin.REPO


def step(log: list, name: str, done) -> None:
    log.append((name, round(done.seconds, 1), done.returncode))
    print(f"[{done.seconds:6.1f} s] {name}: exit {done.returncode}")
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def cluster(debian_pairs):
    missing = twin.missing_tools()
    assert not missing, f"missing {missing}: run {twin.INSTALL_HINT}"
    from trainers.debian import cache_dir

    # A short path: Ray's unix sockets live under the head's temp folder (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    head_home, local_home = root / "head", root / "local"
    head_home.mkdir()
    local_home.mkdir()
    sshd = twin.Sshd(root, head_home).start()
    twin.prepare_head_home(head_home, cache_dir())
    name = f"twin-{root.name[3:].lower()}"
    config = twin.write_twin(
        root / "twin.yaml",
        twin.twin_config(yaml.safe_load((REPO / "cluster.yaml").read_text()), name=name, sshd=sshd),
    )
    # The machine `ray up` runs on: its own HOME (so ~/.ray/auth_token is this test's).
    env = {**os.environ, "HOME": str(local_home)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "VIRTUAL_ENV"):
        env.pop(key, None)
    log: list = []
    state = {
        "root": root,
        "config": config,
        "env": env,
        "log": log,
        "head_home": head_home,
        "sshd": sshd,
    }
    try:
        step(
            log,
            "ray get-auth-token --generate",
            twin.ray_cli("get-auth-token", "--generate", env=env, timeout=60),
        )
        step(
            log,
            "ray up cluster.yaml",
            twin.ray_cli("up", str(config), "-y", "--no-config-cache", env=env, timeout=600),
        )
        yield state
    finally:
        if "down" not in state:  # the test failed before its own `ray down`
            twin.ray_cli("down", str(config), "-y", env=env, timeout=300)
        twin.kill_processes_of(str(head_home))
        sshd.stop()
        shutil.rmtree(root, ignore_errors=True)
        print("\n".join(f"{n}: {s} s, exit {rc}" for n, s, rc in log))


def test_ray_up_then_the_readme_commands_then_ray_down(cluster):
    config, env, log, root = cluster["config"], cluster["env"], cluster["log"], cluster["root"]
    bucket = f"file://{root / 'bucket'}"

    # The sweep, the way the README runs it on the head; the smoke test keeps it to a minute.
    sweep = twin.ray_cli(
        "exec",
        str(config),
        "cd ~/matryoshka-sweeps && WANDB_API_KEY= python sweeps/run.py --config "
        "sweeps/configs/cluster.yaml "
        f"--smoke-test --name twin-smoke --storage_path {bucket}",
        env=env,
        timeout=900,
    )
    step(
        log,
        "ray exec: python sweeps/run.py --config sweeps/configs/cluster.yaml --smoke-test",
        sweep,
    )
    assert "joining the Ray cluster started on this machine" in sweep.stdout + sweep.stderr
    assert f"in storage: {bucket}/twin-smoke/best" in sweep.stdout

    # The export, fetched with ray rsync-down as the README says, is a real model.
    fetched = root / "fetched"
    step(
        log,
        "ray rsync-down runs/twin-smoke",
        twin.ray_cli(
            "rsync-down",
            str(config),
            "~/matryoshka-sweeps/runs/twin-smoke/",
            str(fetched) + "/",
            env=env,
            timeout=300,
        ),
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(fetched / "best"), device="cpu")
    vector = model.encode(["a terminal text editor"], normalize_embeddings=True)[0]
    assert vector.shape == (384,)
    assert (fetched / "report.md").is_file()
    assert json.loads((fetched / "best" / "metrics.json").read_text())["sweep"] == "twin-smoke"
    assert (root / "bucket" / "twin-smoke" / "best" / "model.safetensors").is_file()

    # Serve from the bucket with serve/cluster.yaml (no GPU here; a free port on 127.0.0.1).
    port = twin.free_port()
    serve_config = yaml.safe_load((REPO / "serve" / "cluster.yaml").read_text())
    serve_config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = next(a for a in serve_config["applications"] if a["name"] == "embeddings")
    app["args"]["model"] = f"{bucket}/twin-smoke/best"
    app["deployments"][0]["ray_actor_options"] = {"num_cpus": 0.5}
    (cluster["head_home"] / "serve-twin.yaml").write_text(yaml.safe_dump(serve_config))
    step(
        log,
        "ray exec: serve deploy serve/cluster.yaml",
        twin.ray_cli(
            "exec",
            str(config),
            "cd ~/matryoshka-sweeps && serve deploy ~/serve-twin.yaml",
            env=env,
            timeout=300,
        ),
    )
    deadline = time.monotonic() + 180
    ready = False
    while not ready and time.monotonic() < deadline:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            pass
        time.sleep(1)
    log.append(
        ("Serve app healthy", round(180 - (deadline - time.monotonic()), 1), 0 if ready else 1)
    )
    assert ready, "the cluster's Serve app never became healthy"
    # cluster.yaml's start commands gave Serve's processes serve/env.py's settings (they come
    # from the environment of `ray start`, not of `serve deploy`): Serve's HAProxy ingress runs,
    # and the replica has every setting.
    processes = twin.processes_of(str(cluster["head_home"]))
    assert any("ray::HAProxyManager" in p for p in processes), "no HAProxy ingress on the head"
    replica = next(p for p in processes if "ray::ServeReplica:embeddings:" in p)
    environ = Path(f"/proc/{replica.split(':')[0]}/environ").read_bytes().decode(errors="replace")
    replica_env = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
    for name, value in serve_env.defaults().items():
        assert replica_env.get(name) == value, f"{name} on the head's replica"
    # The README's query, run on the head.
    curl = twin.ray_cli(
        "exec",
        str(config),
        f"curl -s 127.0.0.1:{port}/v1/embeddings -H 'Content-Type: application/json' "
        """-d '{"input": ["a terminal text editor"], "dimensions": 64}'""",
        env=env,
        timeout=120,
    )
    step(log, "ray exec: curl /v1/embeddings", curl)
    body = json.loads(
        next(line for line in reversed(curl.stdout.splitlines()) if line.startswith("{"))
    )
    served = np.array(body["data"][0]["embedding"])
    # The server says which backend encodes (`auto` picks by the export's gate, which depends
    # on the day's data): the served vector must be that backend's own encode of the fetched
    # model, and torch's where the backend is torch.
    backend = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"][0][
        "backend"
    ]
    if backend != "torch":
        from trainers.encoders import OnnxEncoder

        vector = OnnxEncoder(fetched / "best", backend).encode(["a terminal text editor"])[0]
    expected = vector[:64] / np.linalg.norm(vector[:64])
    assert np.allclose(served, expected, atol=1e-5), f"served by {backend}"
    step(
        log,
        "ray exec: serve shutdown",
        twin.ray_cli("exec", str(config), "serve shutdown -y", env=env, timeout=120),
    )

    down = twin.ray_cli("down", str(config), "-y", env=env, timeout=300)
    cluster["down"] = down
    step(log, "ray down cluster.yaml", down)
    # `ray down` runs `ray stop` on the head over ssh; where the login shell cannot find ray it
    # says so and still exits 0 (DESIGN.md), leaving the head running: look for it.
    assert "command not found" not in down.stdout + down.stderr
    deadline = time.monotonic() + 30
    while (
        leftovers := twin.processes_of(str(cluster["head_home"]))
    ) and time.monotonic() < deadline:
        time.sleep(1)
    assert not leftovers, "processes of the twin head left after ray down:\n" + "\n".join(leftovers)
