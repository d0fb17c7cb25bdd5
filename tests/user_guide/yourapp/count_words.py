import greenq

from .broker import broker  # noqa: F401  (sets the broker before the actor is declared)

COUNTS = {}


@greenq.actor
def count_words(url):
    text = "There are some words at this pretend url"  # no network in unit tests
    COUNTS[url] = len(text.split(" "))
