"""What the benchmark reads about the processes it started, from /proc (Linux only).

CPU time, peak resident memory and TCP connections to the broker, summed or
maxed over a process tree, so every system is measured the same way whatever
its process layout (greenq's and Dramatiq's masters fork workers; Celery here
runs one process per worker command).
"""

import os
import subprocess

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    # the command name (field 2) may contain spaces; everything after its ')' is fixed
    return data[data.rindex(")") + 2:].split()


def children_map():
    """``{ppid: [pid, ...]}`` for every process on the machine."""
    tree = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat(name)[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def tree(roots):
    """The roots and all their live descendants."""
    kids = children_map()
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if os.path.exists(f"/proc/{pid}"):
            found.append(pid)
            todo.extend(kids.get(pid, ()))
    return found


def cpu_seconds(pids):
    """User plus system CPU seconds consumed so far by ``pids`` (live ones)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def peak_rss_kib(pid):
    """VmHWM: the most resident memory the process has had, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _tcp_rows(text):
    """The split rows of /proc/net/tcp and tcp6 whose line contains ``text``.

    Rows are "sl local_address rem_address st ... inode", addresses as HEX:PORT.
    Testing for the text first skips splitting the thousands of TIME_WAIT rows
    a scrape leaves behind.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    if text in line:
                        yield line.split()
        except OSError:
            continue


def broker_connections(pids, port):
    """TCP connections from ``pids`` to ``port`` on this machine (established or opening)."""
    def inodes_now():
        found = set()
        for pid in pids:
            found |= _socket_inodes(pid)
        return found

    # Sockets come and go while the table is read (250 greenlets open HTTP
    # connections): count only the ones that belong to the tree before and after.
    before = inodes_now()
    # a remote port followed by state 01 (ESTABLISHED)
    remote_port = f":{port:04X}"
    rows = [parts[9] for parts in _tcp_rows(f"{remote_port} 01 ")
            if parts[2].endswith(remote_port) and parts[3] == "01" and parts[9] in before]
    after = inodes_now()
    return len({inode for inode in rows if inode in after})


def listener_pids(port):
    """The processes listening on TCP ``port`` here (the broker's server), or [] when none can be seen.

    Its CPU runs on the same cores as the workers, so the benchmark reads it per
    job too: a queue's whole cost is its workers' part plus its server's.
    """
    local_port = f":{port:04X}"
    inodes = {parts[9] for parts in _tcp_rows(local_port)
              if parts[1].endswith(local_port) and parts[3] == "0A"}  # 0A: LISTEN
    if not inodes:
        return []
    return [int(name) for name in os.listdir("/proc") if name.isdigit() and _socket_inodes(name) & inodes]


def stop_group(proc, timeout=20):
    """TERM the process group ``proc`` leads, then KILL it if it lingers."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
    try:  # anything of the group that outlived its leader
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
