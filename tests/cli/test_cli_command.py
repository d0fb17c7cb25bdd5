"""The command line, exit codes 2/3/4, logging and the pid file: no shared broker needed (but Redis for exit 3)."""

import os
import re
import signal

import pytest

from cli_helpers import LINE, run_greenq  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)


def test_help_and_version_exit_0(run_greenq):
    proc = run_greenq("--help")
    assert proc.wait() == 0
    text = " ".join(proc.output().split())
    for words in ("MODULES", "--processes", "--threads", "--queues", "--pid-file", "--log-file",
                  "--worker-shutdown-timeout", "--watch", "--max-tasks-per-child", "--max-memory-per-child",
                  "HUP", "Exit codes"):
        assert words in text
    assert "[default: 8]" in text
    gevent_help = run_greenq("--help", mode="gevent")
    assert gevent_help.wait() == 0
    assert "Greenlets per worker process [default: 250]" in " ".join(gevent_help.output().split())

    version = run_greenq("--version")
    assert version.wait() == 0
    assert version.output().strip() == "greenq 0.1.0"


@pytest.mark.parametrize("args, names", [
    (["stubapp", "-p", "0"], "-p"),
    (["stubapp", "--threads", "many"], "--threads"),
    (["stubapp", "--bogus"], "--bogus"),
    ([], "MODULES"),
    (["stubapp:"], "stubapp:"),
])
def test_bad_argument_exits_2_with_one_line(run_greenq, args, names):
    proc = run_greenq(*args)
    assert proc.wait() == 2
    lines = proc.output().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("greenq: error: ") and names in lines[0]


@pytest.mark.parametrize("mode", ["threads", "gevent"])
@pytest.mark.parametrize("spec, expected", [
    ("no_such_module_here", r"cannot import module 'no_such_module_here': no such module"),
    ("broken", r"cannot import module 'broken': RuntimeError: this module is broken on purpose"),
    ("envbroker:missing", r"module 'envbroker' has no attribute 'missing'"),
    ("envbroker:not_a_broker", r"envbroker:not_a_broker is a int, not a greenq Broker"),
])
def test_import_error_exits_2_naming_the_module(run_greenq, tmp_path, mode, spec, expected):
    proc = run_greenq(spec, "-p", "2", mode=mode, env={"GREENQ_BROKER_URL": "stub://"})
    assert proc.wait() == 2
    out = proc.output()
    errors = [line for line in out.splitlines() if "cannot import" in line or "no attribute" in line
              or "not a greenq Broker" in line]
    assert len(errors) == 1, out
    assert re.search(expected, errors[0]), out
    assert "Traceback" not in out


def test_unreachable_broker_exits_3_without_the_password(run_greenq):
    proc = run_greenq("envbroker", "-p", "2", env={"GREENQ_BROKER_URL": "redis://:s3cret@127.0.0.1:16999/0"})
    assert proc.wait() == 3
    out = proc.output()
    assert "127.0.0.1:16999" in out and "cannot reach the broker" in out
    assert "s3cret" not in out
    assert "Traceback" not in out


def _assert_log_format(lines):
    for line in lines:
        if line.startswith("hello "):  # the actor's own print()
            continue
        assert LINE.match(line), line


@pytest.mark.parametrize("mode", ["threads", "gevent"])
def test_log_lines_and_graceful_term_in_flight(run_greenq, mode):
    """TERM while actors sleep: they finish, the workers and master exit 0, every line is well formed."""
    proc = run_greenq("stubapp", "-p", "2", "-t", "4", mode=mode, env={"STUB_COUNT": "3", "STUB_SLEEP": "1.5"})
    proc.ready(2)
    proc.wait_for(r"\[stubapp\.hello\] \[INFO\] Received args=\(\d,\) kwargs=\{\}\.", 6)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    lines = proc.output().splitlines()
    _assert_log_format(lines)
    assert re.search(r"\[greenq\.MainProcess\] \[INFO\] greenq '0\.1\.0' is booting up\.$", lines[0])
    assert len(proc.matching(r"\[greenq\.WorkerProcess\([01]\)\] \[INFO\] Worker process is ready for action\.$")) == 2
    assert len(proc.matching(r"\[stubapp\.hello\] \[INFO\] Completed after [\d.]+ ?ms\.$")) == 6
    assert len(proc.matching(r"^hello \d from \d+$")) == 6
    assert len(proc.matching(r"Worker process [01] \(pid \d+\) stopped\.")) == 2


def test_quiet_messages_and_log_file(run_greenq, tmp_path):
    log_file = tmp_path / "greenq.log"
    proc = run_greenq("stubapp", "-p", "1", "--quiet-messages", "--log-file", str(log_file),
                      env={"STUB_COUNT": "2", "STUB_SLEEP": "0"})
    # nothing reaches stderr: wait on the file instead
    import time

    deadline = time.monotonic() + 30
    while "hello 1" not in (log_file.read_text() if log_file.exists() else ""):
        assert time.monotonic() < deadline, "the workers never logged to the log file"
        time.sleep(0.05)
    proc.signal(signal.SIGINT)
    assert proc.wait() == 0
    assert proc.output() == ""
    text = log_file.read_text()
    assert "Worker process is ready for action." in text
    assert "Received args" not in text and "Completed after" not in text
    _assert_log_format(text.splitlines())


def test_pid_file_held_exits_4_and_is_removed_after(run_greenq, tmp_path):
    pid_file = tmp_path / "greenq.pid"
    first = run_greenq("stubapp", "-p", "1", "--pid-file", str(pid_file), env={"STUB_COUNT": "0"})
    first.ready(1)
    assert pid_file.read_text().strip() == str(first.pid)

    second = run_greenq("stubapp", "-p", "1", "--pid-file", str(pid_file), env={"STUB_COUNT": "0"})
    assert second.wait() == 4
    assert f"greenq is already running with pid {first.pid}" in second.output()
    assert not second.matching("ready for action")

    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert not pid_file.exists()


def test_stale_pid_file_is_replaced(run_greenq, tmp_path):
    pid_file = tmp_path / "greenq.pid"
    pid_file.write_text("999999999\n")
    proc = run_greenq("stubapp", "-p", "1", "--pid-file", str(pid_file), env={"STUB_COUNT": "0"})
    proc.ready(1)
    assert pid_file.read_text().strip() == str(proc.pid)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_second_term_or_int_kills_workers_exit_1(run_greenq, signum):
    proc = run_greenq("stubapp", "-p", "2", env={"STUB_COUNT": "2", "STUB_SLEEP": "120"})
    proc.ready(2)
    proc.wait_for("Received args", 4)
    workers = proc.worker_pids()
    proc.signal(signum)
    proc.wait_for("Stopping")
    proc.signal(signum)
    assert proc.wait(timeout=20) == 1
    assert proc.matching("killing the worker processes now")
    assert len(proc.matching(r"was killed by SIGKILL")) == 2
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
