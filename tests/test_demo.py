"""The README's run command, the scraping demo, works end to end at a small size."""

import re
import subprocess
import sys


def test_demo_scrapes_every_page_with_retries_and_exits_cleanly():
    out = subprocess.run(
        [sys.executable, "-m", "greenq.demo", "--pages", "120", "--latency", "5", "-p", "2", "-t", "20"],
        capture_output=True, text=True, timeout=240,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = re.search(r"(\d+) jobs in [\d.]+ s: \d+ jobs/s \((\d+) done, (\d+) retries, (\d+) failed\)", out.stdout)
    assert summary, out.stdout
    jobs, done, retries, failed = map(int, summary.groups())
    assert (jobs, done, failed) == (120, 120, 0)
    assert retries == 3  # pages 7, 57 and 107 fail once on purpose and are retried
    assert "exited with code 0" in out.stdout
