"""Config errors name the file, where in it (key path and, when found, the line), and why."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file that cannot be used. The running appliance keeps its last good config."""

    def __init__(self, file: str, where: str, reason: str, line: int | None = None) -> None:
        self.file = file
        self.where = where
        self.reason = reason
        self.line = line
        place = f"{file}:{line}" if line else file
        super().__init__(f"{place}: {where}: {reason}" if where else f"{place}: {reason}")
