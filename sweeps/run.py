"""The main job. Until the sweep lands, it runs one Matryoshka training run on the default.

    python sweeps/run.py                      # bundled MiniLM on Debian pairs, CPU, < 15 min
    python sweeps/run.py --epochs 2 ...       # any trainers key can be overridden
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python sweeps/run.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

from trainers import train as train_module  # noqa: E402

DEFAULT_CONFIG = REPO / "trainers" / "configs" / "default.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv and not {"-h", "--help"} & set(argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    return train_module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
