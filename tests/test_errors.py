"""jaxviz.errors: the one error line every command prints."""
from jaxviz.errors import JaxvizError, error_line


def test_error_line_escapes_what_would_break_the_line():
    e = JaxvizError("image folder /no\nfolder\tx does not exist; give a folder")
    assert error_line("jaxviz.examples", e) == (
        "jaxviz.examples: error: image folder /no\\nfolder\\tx does not exist; give a folder")
    assert error_line("jaxviz.grid", "caf\udce9 and caf\u00e9") == "jaxviz.grid: error: caf\\udce9 and caf\u00e9"


def test_notices_are_warnings_of_the_jaxviz_logger_and_quiet_silences_them(caplog):
    from jaxviz.errors import LOG, notice, quiet_notices

    level = LOG.level
    with quiet_notices():
        notice("jaxviz: not said")
    with quiet_notices(False):
        notice("jaxviz: said")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [("jaxviz", "WARNING", "jaxviz: said")]
    assert LOG.level == level
