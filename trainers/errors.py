"""The one error type a user can fix: every CLI catches it once and exits 2 with one line.

Config, data and model errors all derive from ``UserError``; their messages name the bad value
and what would be right. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user gave (a config value, a data file, a model name) cannot be used.

    The message is one line that names the value and the fix.
    """


class ConfigError(UserError):
    """A configuration value is wrong; the message names the key and the fix."""


class DataError(UserError):
    """The data cannot be used as given; the message names the column, file or fix."""


class ModelError(UserError):
    """The model cannot be resolved or does not fit the config; the message says what to pass."""
