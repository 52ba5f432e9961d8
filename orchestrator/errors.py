"""The one exception type for mistakes a user can make (files, fields, options)."""


class TierflowError(Exception):
    """A user-facing error: the message names the file or field and what was expected."""
