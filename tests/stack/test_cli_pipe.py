"""`xpemu ... | head -1`: a reader that goes away ends xpemu quietly, as SIGPIPE would."""

from __future__ import annotations

import subprocess
import sys

from stack.cli import EXIT_BROKEN_PIPE


def test_closed_pipe_ends_quietly_with_141() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "stack", "sim", "--seeds", "1-40", "--scenario", "tiny"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            first = proc.stdout.readline()
            proc.stdout.close()  # the reader leaves, as `head -1` does
            err = proc.stderr.read().decode()
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert first.startswith(b"xpemu sim: seeds 1-40")
    assert "Traceback" not in err, err
    assert code == EXIT_BROKEN_PIPE, (code, err)
