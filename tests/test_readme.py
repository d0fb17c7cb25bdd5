"""README.rst opens with the commands a newcomer pastes, and CI runs exactly its test command."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands():
    return re.findall(r"^    \$ (.+)$", (ROOT / "README.rst").read_text(), flags=re.M)


def test_readme_gives_the_test_command_first_thing():
    commands = readme_commands()
    assert commands, "README.rst shows no '    $ command' lines"
    assert any("pytest" in c and c.startswith("pip install") for c in commands[:2])


def test_ci_extracts_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extract = re.search(r"TEST_COMMAND=\$\((.+)\)$", script, flags=re.M).group(1)
    out = subprocess.run(["bash", "-c", extract], cwd=ROOT, capture_output=True, text=True, check=True)
    expected = next(c for c in readme_commands() if c.startswith("pip install") and "pytest" in c)
    assert out.stdout.strip() == expected
