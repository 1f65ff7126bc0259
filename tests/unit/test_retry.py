import random

from worker.application.retry import Backoff


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial_s=0.1, max_s=2.0)
    rng = random.Random(1)
    delays = [backoff.delay(a, rng) for a in range(1, 12)]
    assert all(0.05 <= d <= 0.1 for d in delays[:1])
    assert all(d <= 2.0 for d in delays)
    assert max(delays[6:]) > 1.0  # reached the cap region
    assert len({round(d, 6) for d in delays[6:]}) > 1  # jitter, not a fixed delay
    assert not backoff.gives_up(10**6)
    assert Backoff(max_attempts=3).gives_up(3)
