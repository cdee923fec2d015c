"""jaxviz.errors: the one error line every command prints."""
from jaxviz.errors import JaxvizError, error_line


def test_error_line_escapes_what_would_break_the_line():
    e = JaxvizError("image folder /no\nfolder\tx does not exist; give a folder")
    assert error_line("jaxviz.examples", e) == (
        "jaxviz.examples: error: image folder /no\\nfolder\\tx does not exist; give a folder")
    assert error_line("jaxviz.grid", "caf\udce9 and caf\u00e9") == "jaxviz.grid: error: caf\\udce9 and caf\u00e9"


def test_a_library_error_is_one_line_whatever_the_path_holds(tmp_path):
    """save_png("a\nb/x.png") from Python was an error of two lines (the command line escaped it)."""
    import numpy as np
    import pytest

    from jaxviz.image import save_png

    with pytest.raises(JaxvizError) as e:
        save_png(tmp_path / "a\nb\tc" / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert str(e.value) == (f"cannot write {tmp_path}/a\\nb\\tc/x.png: the folder {tmp_path}/a\\nb\\tc does not "
                            "exist; create it, or choose another folder")
    assert str(JaxvizError(str(e.value))) == str(e.value)  # escaped once: error_line leaves it as it is
    assert error_line("jaxviz.grid", e.value) == f"jaxviz.grid: error: {e.value}"


def test_notices_are_warnings_of_the_jaxviz_logger_and_quiet_silences_them(caplog):
    from jaxviz.errors import LOG, notice, quiet_notices

    level = LOG.level
    with quiet_notices():
        notice("jaxviz: not said")
    with quiet_notices(False):
        notice("jaxviz: said")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [("jaxviz", "WARNING", "jaxviz: said")]
    assert LOG.level == level
