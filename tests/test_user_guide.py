"""The user guide's "Unit Testing" section, as written there with greenq's names, runs and passes.

The example app and its conftest live in tests/user_guide/; they are run by a
separate pytest process with UNIT_TESTS=1, exactly as a user would run them.
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "user_guide"


def test_unit_testing_example_passes_as_written():
    env = {**os.environ, "UNIT_TESTS": "1", "PYTHONPATH": str(HERE)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(HERE),
         "-c", os.devnull, str(HERE / "check_count_words.py")],
        cwd=HERE, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout
