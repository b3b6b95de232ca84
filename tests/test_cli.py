"""The command line documents itself and refuses bad arguments with one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from conftest import sigint_as_in_a_terminal
from grv_batch.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["run"], ["train"], ["report"], ["demo"]])
def test_every_command_documents_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version_names_the_package_and_the_shipped_bundle():
    import json

    from grv_batch._version import __version__
    from grv_batch.models.bundle import MANIFEST, SHIPPED_BUNDLE

    result = runner.invoke(app, ["--version"])
    bundle = json.loads((SHIPPED_BUNDLE / MANIFEST).read_text())["version"]
    assert result.exit_code == 0
    assert result.output.strip() == f"grv-batch {__version__} (model bundle {bundle})"


def test_report_on_something_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a finished grv-batch run" in result.output


def test_bad_storage_option_is_one_line(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--storage-option", "novalue"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


def test_job_file_errors_keep_their_brackets(tmp_path):
    # the message names the TOML table; the terminal must not eat "[execution]" as a style tag
    job = tmp_path / "job.toml"
    job.write_text("[execution]\nworkers = 'many'\n")
    (tmp_path / "in").mkdir()
    result = runner.invoke(app, ["run", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                                 "--job", str(job)])
    assert result.exit_code == 2
    assert "[execution].workers" in result.output


@pytest.mark.parametrize("address", ["127.0.0.1:8786x", "http://127.0.0.1:8786", "tcp://[::1"])
def test_a_mistyped_scheduler_address_is_one_line(tmp_path, address):
    import numpy as np
    import soundfile as sf

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", np.zeros(1600, np.float32), 16000)
    result = runner.invoke(app, ["run", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                                 "--scheduler", address, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "cannot connect to the Dask scheduler" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # the run never started: no OUT left behind
    (tmp_path / "mine").mkdir()  # an empty folder the user made for OUT stays theirs, empty
    for out in (tmp_path / "mine", tmp_path / "mine" / "a" / "b"):  # and folders made for OUT go
        result = runner.invoke(app, ["run", str(tmp_path / "in"), "--out", str(out), "--scheduler", address])
        assert result.exit_code == 2 and "cannot connect to the Dask scheduler" in result.output
        assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_storage_failures_are_told_apart_from_bugs():
    """A bucket that stops answering after planning raises botocore's own exceptions, which are
    not OSErrors: they are one-line storage errors too, while a bug keeps its traceback."""
    from botocore.exceptions import EndpointConnectionError

    from grv_batch.storage import is_storage_error

    assert is_storage_error(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_storage_error(ConnectionResetError()) and is_storage_error(TimeoutError())
    assert not is_storage_error(ValueError("a bug")) and not is_storage_error(KeyError("x"))


def _python_as_in_a_terminal(code: str):
    """Run ``code`` in a fresh interpreter with Ctrl-C delivered as in a terminal; it must succeed."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=sigint_as_in_a_terminal)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_ctrl_c_that_python_loses_in_a_destructor_still_stops_the_run():
    """Python raises Ctrl-C's KeyboardInterrupt wherever the main thread is, also inside a
    ``__del__`` (as distributed's ``Future.__del__``), where it is only printed and lost: the run
    went on to "Done". The CLI's handler keeps it in a flag the run checks between batches, and
    the lost copy is not printed."""
    code = (
        "import signal, threading\n"
        "from grv_batch.cli import CtrlCFlag, _ctrl_c_sets\n"
        "class Dropped:\n"
        "    def __del__(self):\n"
        # to the main thread itself (os.kill may land on another thread, and the main thread then
        # only sees it after __del__); the handler runs at the loop's next backward jump
        "        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)\n"
        "        for _ in range(1000):\n"
        "            pass\n"
        "stop = CtrlCFlag()\n"
        "with _ctrl_c_sets(stop):\n"
        "    Dropped()\n"
        "    print('went on; stop is set:', stop.is_set())\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n"
    )
    proc = _python_as_in_a_terminal(code)
    assert proc.stdout.strip() == "went on; stop is set: True"
    assert "KeyboardInterrupt" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_ctrl_c_while_the_run_polls_its_stop_flag_never_freezes_it():
    """The run polls the flag the Ctrl-C handler sets (``stop.wait(0.2)`` between batches). With a
    ``threading.Event`` a Ctrl-C landing while ``Event.wait`` held the event's lock made the
    handler's ``Event.set`` wait for that lock forever: about half of these 30 Ctrl-Cs froze."""
    code = (
        "import os, signal, threading, time\n"
        "from grv_batch.cli import CtrlCFlag, _ctrl_c_sets\n"
        "for i in range(30):\n"
        "    stop = CtrlCFlag()\n"
        "    threading.Timer(0.01 + 0.003 * i, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "    try:\n"
        "        with _ctrl_c_sets(stop):\n"
        "            while not stop.wait(0):\n"  # the tightest poll: the most chances to collide
        "                pass\n"
        "            raise KeyboardInterrupt\n"
        "    except KeyboardInterrupt:\n"
        "        assert stop.is_set()\n"
        "print('30 stops')\n"
    )
    assert _python_as_in_a_terminal(code).stdout.strip() == "30 stops"


def test_a_lost_ctrl_c_stops_the_run_while_a_long_batch_is_still_running():
    """The run does not wait for the next batch to finish before it acts on a lost Ctrl-C."""
    import threading

    from grv_batch.runner import _until_stopped

    class LongBatch:  # as_completed over one batch that has not finished
        def has_ready(self):
            return False

        def is_empty(self):
            return False

        def __next__(self):
            raise AssertionError("waited for the batch to finish")

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(KeyboardInterrupt):
        next(_until_stopped(LongBatch(), stop))
