"""The scraping demo: ``python -m greenq.demo``.

It shows greenq end to end on the embedded SQLite broker with nothing else
installed: a local web server (``server.py``) answers N pages after a fixed
latency, one ``count_words`` job per page (``app.py``) is enqueued, and
``greenq-gevent`` runs them on several processes of hundreds of greenlets while
the runner (``__main__.py``) shows progress and a summary.
"""
