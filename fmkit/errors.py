"""User-facing errors: one line that names the file, key or value and what was expected."""


class FmkitError(Exception):
    """A mistake in the user's input. Recipes print it as one line and exit with status 2."""


class ConfigError(FmkitError):
    """An unknown key, a wrong type or an impossible combination of settings."""


class DataError(FmkitError):
    """Missing or empty input data, or data that cannot serve the requested task."""
