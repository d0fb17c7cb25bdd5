"""The demo's actor, the user guide's ``count_words``, on the default broker.

The page server fails a few pages once on purpose, so the summary shows retries.
"""

import urllib.request

import greenq


@greenq.actor(queue_name="demo", max_retries=3, min_backoff=100, max_backoff=1000, time_limit=30000)
def count_words(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    return len(text.split(" "))
