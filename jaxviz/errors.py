"""The one exception type jaxviz raises for bad input, and how it says everything else."""
import contextlib
import logging

LOG = logging.getLogger("jaxviz")


class JaxvizError(Exception):
    """A problem with the user's input (weights, layer, filters, size, output).

    The message is one line that names the problem and how to fix it; the command
    line prints it as is, without a traceback. A newline, tab or other unprintable character
    of a path or name it quotes is escaped (``printable``), so a program printing it prints one line.
    """

    def __init__(self, message="", *args):
        super().__init__(printable(message), *args)


def error_line(command: str, message) -> str:
    """``COMMAND: error: MESSAGE`` on one line: a newline, tab or other unprintable character of a
    path or name the message quotes is escaped (``\\n``), so the line stays one line."""
    return f"{command}: error: {printable(message)}"


def printable(text) -> str:
    """``text`` with each newline, tab, escape or other unprintable character as Python writes it (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def notice(text: str) -> None:
    """Say ``text`` (a fallback taken, a slow first use) as a warning of the "jaxviz" logger: with
    no logging set up Python prints it alone on stderr; the commands' ``--quiet`` raises the
    logger's level, and a program can do the same or route it to its own handlers."""
    LOG.warning(text)


@contextlib.contextmanager
def quiet_notices(quiet: bool = True):
    """Within: no ``notice`` is said when ``quiet`` (a command's ``--quiet``); the level is put back after."""
    old = LOG.level
    if quiet:
        LOG.setLevel(logging.ERROR)
    try:
        yield
    finally:
        LOG.setLevel(old)
