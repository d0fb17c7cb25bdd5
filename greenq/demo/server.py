"""A local web server of numbered pages that answer after a fixed latency.

``python -m greenq.demo.server --latency 50`` prints the port it listens on
(127.0.0.1 only) and serves ``/page/<n>`` until killed. Every 50th page answers
500 the first time it is asked for, so the demo's retries have work to do.
``/stats`` reports how many pages and errors it served.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

WORDS = "greenq runs many jobs on few cores while they wait on the network".split()


class PageServer:
    def __init__(self, latency_ms):
        self.latency = latency_ms / 1000
        self.served = 0
        self.errors = 0
        self.failed_once = set()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/stats":
            body = json.dumps({"served": self.served, "errors": self.errors}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if not path.startswith("/page/") or not path[6:].isdigit():
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such page\n"]
        number = int(path[6:])
        time.sleep(self.latency)
        if number % 50 == 7 and number not in self.failed_once:
            self.failed_once.add(number)
            self.errors += 1
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"try again\n"]
        self.served += 1
        words = " ".join(WORDS[i % len(WORDS)] for i in range(10 + number % 90))
        start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
        return [words.encode()]


@click.command()
@click.option("--latency", default=50, show_default=True, help="Milliseconds each page takes to answer.")
@click.option("--port", default=0, help="Port on 127.0.0.1 (0: any free one).")
def main(latency, port):
    server = WSGIServer(("127.0.0.1", port), PageServer(latency), log=None, error_log=None)
    server.start()
    print(server.server_port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
