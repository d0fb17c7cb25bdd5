"""What the command line decided, in one object the master hands to each worker it forks."""

import dataclasses


@dataclasses.dataclass
class Options:
    modules: tuple
    processes: int
    threads: int
    paths: tuple = (".",)
    queues: tuple = ()
    pid_file: str = None
    log_file: str = None
    shutdown_timeout: int = 600000  # ms a worker waits for in-flight work on TERM
    worker_timeout: int = 1000  # ms per broker fetch; bounds how fast an idle worker notices TERM
    watch: tuple = ()
    verbose: bool = False
    quiet_messages: bool = False
    max_tasks_per_child: int = None
    max_memory_per_child: int = None  # KiB of resident memory
    hub_block_threshold: float = 1.0  # seconds; 0 turns the monitor off
    prog: str = "greenq"
