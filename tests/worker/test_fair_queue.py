from crest.worker.fair_queue import FairQueue


def make(**kwargs) -> FairQueue[tuple[str, int, int]]:
    # items are (job, number, size)
    return FairQueue(size=lambda item: item[2], **kwargs)


def test_take_is_round_robin_across_jobs() -> None:
    queue = make()
    for n in range(4):
        queue.put("big", ("big", n, 1))
    queue.put("small", ("small", 0, 1))
    assert queue.take(limit=3) == [("big", 0, 1), ("small", 0, 1), ("big", 1, 1)]
    assert queue.take(limit=10) == [("big", 2, 1), ("big", 3, 1)]
    assert len(queue) == 0


def test_served_jobs_go_to_the_back() -> None:
    queue = make()
    for n in range(3):
        queue.put("a", ("a", n, 1))
        queue.put("b", ("b", n, 1))
    queue.put("c", ("c", 0, 1))
    assert queue.take(limit=1) == [("a", 0, 1)]
    assert queue.take(limit=1) == [("b", 0, 1)]  # a waits behind b and c now
    assert queue.take(limit=2) == [("c", 0, 1), ("a", 1, 1)]


def test_limit_and_keys_and_an_oversized_first_item() -> None:
    queue = make(key=lambda item: item[1] % 2)
    queue.put("a", ("a", 0, 50))
    queue.put("b", ("b", 1, 1))  # other key: never with a or c
    queue.put("c", ("c", 2, 1))
    assert queue.take(limit=10) == [("a", 0, 50)]  # the first always goes, alone if too big
    queue.put("a", ("a", 4, 1))
    assert queue.take(limit=10) == [("b", 1, 1)]
    assert queue.take(limit=10) == [("c", 2, 1), ("a", 4, 1)]


def test_retries_go_first_and_discard_drops() -> None:
    queue = make()
    queue.put("a", ("a", 1, 1))
    queue.put("a", ("a", 0, 1), front=True)
    queue.put("b", ("b", 0, 1))
    queue.discard(lambda item: item[0] != "b")
    assert list(queue) == [("a", 0, 1), ("a", 1, 1)]
    assert queue.take(limit=5) == [("a", 0, 1), ("a", 1, 1)]


def test_a_job_that_starts_waiting_goes_before_jobs_served_already() -> None:
    # A large selection split into chunks must not keep a small job behind its next chunk.
    queue = make()
    for n in range(4):
        queue.put("large", ("large", n, 10))
    assert queue.take(limit=10) == [("large", 0, 10)]
    queue.put("small", ("small", 0, 1))
    assert queue.take(limit=10) == [("small", 0, 1)]  # the next chunk would not fit beside it
    assert queue.take(limit=10) == [("large", 1, 10)]
    queue.put("small", ("small", 1, 1))  # it waits again: first again
    assert queue.take(limit=20) == [("small", 1, 1), ("large", 2, 10)]
