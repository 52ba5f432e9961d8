"""Errors of the migration package."""


class MigrationError(Exception):
    """A session transfer failed: refused, timed out, or its peer is gone."""


class WireError(MigrationError):
    """Bytes that do not decode as a session: malformed, truncated, or of a refused type."""


class MobilityInputError(ValueError):
    """A mobility input (trace file, parameters) is wrong; the message names the file and line or field."""
