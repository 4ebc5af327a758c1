"""What every command-line entry point shares: one logging set-up and one error path.

    sys.exit(cli.run(main))     # in each entry script

A ``UserError`` (a bad config value, unusable data, a model that cannot be resolved) ends the
command with one line on stderr naming the value and the fix, and exit code 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from trainers.errors import UserError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Libraries that log every metric or request at INFO; the commands print their own summaries.
QUIET_LOGGERS = (
    "sentence_transformers.sentence_transformer.evaluation.information_retrieval",
    "httpx",
)


def setup_logging(level: int = logging.INFO) -> None:
    """The one log format of every command (idempotent)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
