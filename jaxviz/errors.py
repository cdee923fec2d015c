"""The one exception type jaxviz raises for bad input."""


class JaxvizError(Exception):
    """A problem with the user's input (weights, layer, filters, size, output).

    The message is one line that names the problem and how to fix it; the command
    line prints it as is, without a traceback.
    """
