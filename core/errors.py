"""Errors a user can cause. Each says what to fix; the CLI prints it in one line and
exits with status 2. Libraries raise these (or their own subclasses)."""


class SlimbertError(Exception):
    """An error the user can fix; the CLI prints it without a traceback and exits 2."""


class ConfigError(SlimbertError, ValueError):
    """An invalid configuration key or value."""


class ConfigValueError(ConfigError):
    """An invalid value. `key` is relative to the section that checked it; the message
    names it in full (`section.key`)."""

    def __init__(self, key: str, message: str, section: str = "") -> None:
        self.key, self.message, self.section = key, message, section
        full = f"{section}.{key}" if section else key
        super().__init__(f"invalid config value for '{full}': {message}")

    def within(self, section: str) -> "ConfigValueError":
        """The same error, named from `section` (e.g. `prune.train` for the training
        keys of that section)."""
        return ConfigValueError(self.key, self.message, section)


class ArtifactError(SlimbertError):
    """A missing, incomplete or tampered artifact."""
