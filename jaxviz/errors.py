"""The one exception type jaxviz raises for bad input."""


class JaxvizError(Exception):
    """A problem with the user's input (weights, layer, filters, size, output).

    The message is one line that names the problem and how to fix it; the command
    line prints it as is, without a traceback.
    """


def error_line(command: str, message) -> str:
    """``COMMAND: error: MESSAGE`` on one line: a newline, tab or other unprintable character of a
    path or name the message quotes is escaped (``\\n``), so the line stays one line."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))
    return f"{command}: error: {text}"
