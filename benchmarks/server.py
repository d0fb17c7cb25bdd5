"""The page every scrape job fetches: a local HTTP server that answers after 50 ms.

    python -m benchmarks.server [--port 0] [--delay-ms 50]

gevent's WSGI server, one greenlet per connection, a listen backlog of 4096,
so 500 concurrent connections (2 processes x 250 greenlets) are served without
refusals or queueing. HTTP/1.1 keep-alive is honoured, for the Session variant.
Binds 127.0.0.1 only. Prints ``port <n>`` once it listens; stops on TERM.
"""

from gevent import monkey  # noqa: I001

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

BODY = b"<html><body>" + b"greenq benchmark page " * 40 + b"</body></html>"


def make_app(delay):
    def app(environ, start_response):
        gevent.sleep(delay)
        start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(BODY)))])
        return [BODY]

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    from gevent import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(4096)
    server = WSGIServer(listener, make_app(args.delay_ms / 1000), log=None, error_log=None)
    server.start()
    print(f"port {listener.getsockname()[1]}", flush=True)
    stopped = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopped.set)
    gevent.signal_handler(signal.SIGINT, stopped.set)
    stopped.wait()
    server.stop(timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
