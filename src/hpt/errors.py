"""The one exception type for bad user input: the CLI prints its message and exits with code 2."""


class HptError(Exception):
    """A problem with the user's input (file, config, data, checkpoint) with a message naming the fix."""


class MissingExtraError(HptError):
    """An optional dependency is not installed; the message names the ``pip install 'hpt[EXTRA]'`` that adds it."""
