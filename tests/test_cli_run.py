"""jaxviz.cli_run: the worker-thread runner, the write gate, the start-up handlers' trigger."""
import threading
import time

import pytest

from jaxviz.cli_run import WriteGate, launched_command, run_interruptible


def test_launched_command_only_for_our_commands():
    assert launched_command(["python", "-m", "jaxviz.grid", "--size", "16"], "-m") == "jaxviz.grid"
    assert launched_command(["python", "-X", "importtime", "-m", "jaxviz.atlas"], "-m") == "jaxviz.atlas"
    assert launched_command(["python", "-m", "pytest", "-m", "jaxviz.grid"], "-m") is None
    assert launched_command(["python", "script.py"], "script.py") is None
    assert launched_command(["/usr/bin/python", "/venv/bin/jaxviz-atlas"], "/venv/bin/jaxviz-atlas") == "jaxviz.atlas"


def test_run_interruptible_returns_the_result_or_raises_the_error():
    assert run_interruptible(lambda: 7, WriteGate(), lambda: None) == 7
    with pytest.raises(ValueError, match="boom"):
        run_interruptible(lambda: (_ for _ in ()).throw(ValueError("boom")), WriteGate(), lambda: None)
    with pytest.raises(KeyboardInterrupt):  # raised by the work itself: an ordinary exception here
        run_interruptible(lambda: (_ for _ in ()).throw(KeyboardInterrupt()), WriteGate(), lambda: None)


def test_closing_the_gate_waits_for_the_write_in_progress_and_blocks_later_ones():
    gate = WriteGate()
    events = []

    def writer():
        with gate:
            events.append("start")
            time.sleep(0.3)
            events.append("end")
        with gate:  # never runs once the gate is closed
            events.append("second")

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    time.sleep(0.1)
    assert gate.close(timeout=5)
    assert events == ["start", "end"]
    time.sleep(0.1)
    assert events == ["start", "end"]
