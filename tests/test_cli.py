"""The command line documents itself and refuses bad arguments with one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from grv_batch.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [[], ["run"], ["train"], ["report"], ["demo"]])
def test_every_command_documents_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


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
