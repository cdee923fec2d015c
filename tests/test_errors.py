"""jaxviz.errors: the one error line every command prints."""
from jaxviz.errors import JaxvizError, error_line


def test_error_line_escapes_what_would_break_the_line():
    e = JaxvizError("image folder /no\nfolder\tx does not exist; give a folder")
    assert error_line("jaxviz.examples", e) == (
        "jaxviz.examples: error: image folder /no\\nfolder\\tx does not exist; give a folder")
    assert error_line("jaxviz.grid", "caf\udce9 and caf\u00e9") == "jaxviz.grid: error: caf\\udce9 and caf\u00e9"
