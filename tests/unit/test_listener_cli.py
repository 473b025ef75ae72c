"""`mailwarden-listener`'s command line: what a pod runs is read without argparse (its memory,
docs/decisions/0001-listener-pod-footprint.md); everything else gets argparse's help and
errors, exit status 2 for a bad argument."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from mailwarden.listener import cli


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--config", "/etc/l.yaml"], (pathlib.Path("/etc/l.yaml"), False)),
        (["-v", "--config", "/etc/l.yaml"], (pathlib.Path("/etc/l.yaml"), True)),
        (["--config=/etc/l.yaml", "--verbose"], (pathlib.Path("/etc/l.yaml"), True)),
        (["--config"], None),
        (["--config", "-v"], None),
        (["--config="], None),
        (["--help"], None),
        (["--config", "a", "b"], None),
        ([], None),
    ],
)
def test_the_pod_s_command_line_is_read_without_argparse_and_the_rest_falls_through(argv, expected):
    assert cli._plain(argv) == expected


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: --config"),
        (["--config"], "expected one argument"),
        (["--colour", "blue", "--config", "x"], "unrecognized arguments: --colour blue"),
    ],
)
def test_bad_arguments_get_argparse_s_message_and_exit_2(argv, says):
    out = subprocess.run(
        [sys.executable, "-m", "mailwarden.listener", *argv], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert says in out.stderr


def test_the_listener_process_does_not_import_argparse(tmp_path):
    missing = tmp_path / "nope.yaml"
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['mailwarden-listener', '--config', {str(missing)!r}]\n"
        "try:\n"
        "    runpy.run_module('mailwarden.listener', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, 'argparse' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.split() == ["2", "False"], out.stderr
