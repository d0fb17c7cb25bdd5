from yourapp.count_words import COUNTS, count_words


def test_count_words(stub_broker, stub_worker):
    count_words.send("http://example.com")
    stub_broker.join(count_words.queue_name)
    stub_worker.join()
    assert COUNTS == {"http://example.com": 8}


def test_actors_are_callable_synchronously():
    count_words("http://example.org")
    assert COUNTS["http://example.org"] == 8
