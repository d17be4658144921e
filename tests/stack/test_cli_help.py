"""`xpemu CMD --help` prints every subcommand's usage and exits 0 (a stray `%` in a help
string made argparse raise instead: `xpemu policy --help` was a traceback)."""

from __future__ import annotations

import argparse

import pytest

from stack.cli_args import build_parser


def _subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("xpemu has no subcommands")


@pytest.mark.parametrize("cmd", _subcommands())
def test_help_of_every_subcommand(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([cmd, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: xpemu {cmd}")
