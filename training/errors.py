"""The one exception every entry point turns into a one-line message and exit code 2."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """One or more configuration problems; each line names the key, the bad value and the fix."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
