"""The one error type the command line reports as a single line, without a traceback."""


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a model directory): the message says
    what is wrong and what to do, in one line."""
