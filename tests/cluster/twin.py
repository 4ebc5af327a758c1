"""A local-provider twin of cluster.yaml, reached over ssh to 127.0.0.1, for a real `ray up`.

The "head node" is this machine, seen through a private sshd:
- bound to 127.0.0.1 only, on a free port, with a throwaway host key and client key, no
  passwords; it logs in as the current user (root in CI: the machine's Python lives under
  /root, which no other user may read) but gives the session its own HOME, so `ray up`'s
  file mounts, ~/.bashrc and Ray's token land in a temporary folder, not in the real home;
- ssh reaches that port through `ProxyCommand nc 127.0.0.1 <port>` (Ray's auth config has no
  port setting; its ssh_proxy_command is the documented way around);
- the head's "image" is a venv layered over the project's .venv (a .pth line), with pip
  kept offline (PIP_NO_INDEX): cluster.yaml's setup commands run unchanged and install the
  project from the file mount, without reaching PyPI.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOOLS = {
    "sshd": "/usr/sbin/sshd",
    "rsync": "rsync",
    "nc": "nc",
    "ssh": "ssh",
    "ssh-keygen": "ssh-keygen",
}
INSTALL_HINT = "make test-deps (apt-get install openssh-server rsync netcat-openbsd)"


def missing_tools() -> list[str]:
    return [name for name, exe in TOOLS.items() if shutil.which(exe) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A private sshd on 127.0.0.1 that gives its sessions ``home`` as HOME."""

    def __init__(self, root: Path, home: Path):
        self.root, self.home = root, home
        self.port = free_port()
        self.key = root / "id_ed25519"
        self.process: subprocess.Popen | None = None

    def start(self) -> Sshd:
        for key in (self.root / "host_key", self.key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        config = self.root / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {self.root / 'host_key'}\n"
            f"PidFile {self.root / 'sshd.pid'}\nAuthorizedKeysFile "
            f"{self.root / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication "
            "no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 100\nSetEnv "
            f"HOME={self.home}\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
        # -D: stays in the foreground as our child, so the test owns (and kills) it.
        self.process = subprocess.Popen(
            [TOOLS["sshd"], "-D", "-f", str(config), "-E", str(self.root / "sshd.log")],
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log()}")

    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)


def prepare_head_home(home: Path, data_cache: Path | None) -> None:
    """What the node image provides: Python with the dependencies, offline pip and hub, the
    data cache."""
    venv = home / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    site = (
        venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )
    # The project's .venv packages (torch, Ray, sentence-transformers...) under the new venv; pip
    # runs from there too (python -m pip), so `pip install` in setup_commands targets the new venv.
    (site / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    (venv / "bin" / "pip").write_text(f'#!/bin/sh\nexec {venv / "bin" / "python"} -m pip "$@"\n')
    (venv / "bin" / "pip").chmod(0o755)
    # The image's commands (ray, serve, wandb...): the .venv's launchers, run by the new venv's
    # Python.
    shebang = f"#!{Path(sys.prefix) / 'bin' / 'python'}"
    for script in (Path(sys.prefix) / "bin").iterdir():
        target = venv / "bin" / script.name
        if script.is_file() and not target.exists():
            try:
                lines = script.read_text().splitlines(keepends=True)
            except UnicodeDecodeError:
                continue
            if lines and lines[0].startswith(shebang):
                target.write_text(f"#!{venv / 'bin' / 'python'}\n" + "".join(lines[1:]))
                target.chmod(0o755)
    (home / ".bashrc").write_text(
        f"export PATH={venv / 'bin'}:$PATH\n"
        # pip: offline, and the build backend from the environment (no isolated build env from
        # PyPI).
        "export PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 PIP_DISABLE_PIP_VERSION_CHECK=1\n"
        "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "
        "TOKENIZERS_PARALLELISM=false\n"
    )
    if data_cache is not None:
        target = home / ".cache" / "matryoshka-sweeps"
        target.mkdir(parents=True)
        for item in data_cache.glob("debian-pairs-*"):
            shutil.copy(item, target / item.name)


def twin_config(cluster: dict, *, name: str, sshd: Sshd) -> dict:
    """cluster.yaml for the local provider: the same mounts and commands, the head at 127.0.0.1."""
    twin = {
        k: v
        for k, v in cluster.items()
        if k
        not in (
            "docker",  # no container runtime here; the venv plays the image
            "available_node_types",  # the local provider has one node type of its own
            "head_node_type",
            "head_setup_commands",  # boto3, for the AWS node provider only
        )
    }
    twin.update(
        cluster_name=name,
        max_workers=0,
        provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        auth={
            "ssh_user": os.environ.get("USER") or "root",
            "ssh_private_key": str(sshd.key),
            "ssh_proxy_command": f"nc 127.0.0.1 {sshd.port}",
        },
    )
    return twin


def write_twin(path: Path, twin: dict) -> Path:
    path.write_text(yaml.safe_dump(twin, sort_keys=False))
    return path


def ray_cli(
    *args: str, env: dict[str, str], timeout: float, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """Run Ray's CLI of this environment, as a user would, and keep its output."""
    ray = Path(sys.executable).with_name("ray")
    started = time.monotonic()
    done = subprocess.run(
        [str(ray), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    done.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return done


def processes_of(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (our twin's folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker.encode() in environ:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def kill_processes_of(marker: str) -> None:
    """Clean-up after a failed test only: the test itself asserts that `ray down` left nothing."""
    for line in processes_of(marker):
        try:
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        except OSError:
            pass
