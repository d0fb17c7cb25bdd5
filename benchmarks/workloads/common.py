"""Job bodies and the in-process probe shared by every system's app module.

Every system (greenq, Dramatiq, Celery, the bare gevent pool) runs exactly
these functions, so the only difference between them is the queue around the
call. The benchmark needs three things from inside each worker process, and
gets them without touching the system under test:

* a gate: jobs of a phase wait until the orchestrator releases that phase, so
  N messages can be enqueued and prefetched first and the timed part contains
  only processing (no start-up, no producer speed);
* completion counts with first/last timestamps per phase, for throughput;
* pickup latencies (send -> actor start) for the latency workload.

A probe thread (a greenlet once gevent has patched ``threading``) polls the
release file and writes the stats file every ``TICK`` seconds. Its cost, an
``os.stat`` and a small write 100 times a second, is the same in every system,
the bare pool included, so it cancels out of every ratio.

Configuration comes from the environment (set by ``benchmarks.run``):
``BENCH_RUN_DIR`` (where release and stats files live) and ``BENCH_HTTP_URL``.
"""

import json
import os
import threading
import time

TICK = 0.005

_lock = threading.Lock()
_state = {"pid": None}


def run_dir():
    return os.environ["BENCH_RUN_DIR"]


def _probe():
    """Start this process's probe thread once (again after a fork)."""
    pid = os.getpid()
    if _state["pid"] == pid:
        return _state
    with _lock:
        if _state["pid"] == pid:
            return _state
        _state.clear()
        _state.update(pid=pid, released=0, events={}, phases={}, waiting=0, latency=[], dirty=True,
                      session=None)
        thread = threading.Thread(target=_probe_loop, args=(pid,), name="bench-probe", daemon=True)
        thread.start()
    return _state


def _read_release():
    try:
        with open(os.path.join(run_dir(), "release")) as f:
            return int(f.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _probe_loop(pid):
    path = os.path.join(run_dir(), f"stats-{pid}.json")
    while _state.get("pid") == pid:
        released = _read_release()
        if released != _state["released"]:
            _state["released"] = released
            for phase, event in list(_state["events"].items()):
                if phase <= released:
                    event.set()
        if _state["dirty"]:
            _state["dirty"] = False
            data = {"pid": pid, "waiting": _state["waiting"], "phases": _state["phases"],
                    "latency": _state["latency"]}
            with open(path + ".tmp", "w") as f:
                json.dump(data, f)
            os.replace(path + ".tmp", path)
        time.sleep(TICK)


def start_probe():
    """Called at import by each app module, so an idle worker process is visible at once."""
    _probe()
    if os.environ.get("BENCH_PROFILE"):
        _start_sampler(os.environ["BENCH_PROFILE"])


def _start_sampler(folder):
    """A CPU sampling profiler for ``benchmarks.profile``: SIGPROF every 1 ms of CPU, collapsed stacks.

    It samples whatever greenlet is on the CPU, so it sees a gevent process as
    it is (py-spy cannot attach to every interpreter build).
    """
    import collections
    import signal

    counts = collections.Counter()

    def sample(signum, frame):
        stack = []
        while frame is not None:
            code = frame.f_code
            stack.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})")
            frame = frame.f_back
        counts[";".join(reversed(stack))] += 1

    def dump():
        path = os.path.join(folder, f"profile-{os.getpid()}.txt")
        while True:
            time.sleep(0.5)
            with open(path + ".tmp", "w") as f:
                for stack, n in list(counts.items()):  # the handler may add a stack meanwhile
                    f.write(f"{stack} {n}\n")
            os.replace(path + ".tmp", path)

    signal.signal(signal.SIGPROF, sample)
    signal.setitimer(signal.ITIMER_PROF, 0.001, 0.001)
    threading.Thread(target=dump, name="bench-profile", daemon=True).start()


def _gate(phase):
    state = _probe()
    if phase and phase > state["released"]:
        event = state["events"].get(phase)
        if event is None:
            event = state["events"].setdefault(phase, threading.Event())
        if phase <= state["released"]:
            event.set()
        state["waiting"] += 1
        state["dirty"] = True
        event.wait()
        state["waiting"] -= 1
    return state


def _done(state, phase):
    now = time.time()
    entry = state["phases"].get(str(phase))
    if entry is None:
        state["phases"][str(phase)] = [1, now, now]
    else:
        entry[0] += 1
        entry[2] = now
    state["dirty"] = True


# --- the jobs ------------------------------------------------------------------------

def noop(phase):
    """Nothing but the gate and the count: what remains is the queue's own cost."""
    _done(_gate(phase), phase)


def _session(state):
    session = state.get("session")
    if session is None:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=512)
        session.mount("http://", adapter)
        state["session"] = session
    return session


def scrape(phase, keep_alive=False):
    """Fetch the local 50 ms page: a new connection each time, or one keep-alive Session per process."""
    import requests

    state = _gate(phase)
    url = os.environ["BENCH_HTTP_URL"]
    if keep_alive:
        response = _session(state).get(url, timeout=30)
    else:
        response = requests.get(url, timeout=30)
    if response.status_code != 200 or not response.content:
        raise RuntimeError(f"the page answered {response.status_code}")
    _done(state, phase)


def latency(sent_at):
    """Record how long after ``sent_at`` (epoch seconds, set by the producer) the job started."""
    started = time.time()
    state = _probe()
    if sent_at <= 0:  # the producer's warm-up message
        return
    state["latency"].append((started - sent_at) * 1000)
    state["dirty"] = True
