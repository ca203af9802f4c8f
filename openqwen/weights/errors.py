"""The one error type for unusable weight files."""


class WeightsError(ValueError):
    """A weights file cannot be used.

    The message is one line that names the file and the problem, so a command-line tool can show it
    as is instead of a traceback from deep inside a parser.
    """
