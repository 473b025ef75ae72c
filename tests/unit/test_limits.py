from mailwarden.listener import limits


def test_a_cap_of_zero_admits_everyone():
    lim = limits.ConnectionLimiter(0, 0)
    assert all(lim.acquire("192.0.2.1") is limits.Verdict.ACCEPTED for _ in range(1000))


def test_exactly_the_cap_is_admitted_then_release_makes_room():
    lim = limits.ConnectionLimiter(3, 0)
    verdicts = [lim.acquire(f"192.0.2.{i}") for i in range(5)]
    assert verdicts.count(limits.Verdict.ACCEPTED) == 3
    assert verdicts[3:] == [limits.Verdict.OVER_CAP] * 2
    lim.release("192.0.2.0")
    assert lim.acquire("192.0.2.9") is limits.Verdict.ACCEPTED


def test_per_address_cap_counts_each_address_apart():
    lim = limits.ConnectionLimiter(0, 2)
    assert lim.acquire("a") is limits.Verdict.ACCEPTED
    assert lim.acquire("a") is limits.Verdict.ACCEPTED
    assert lim.acquire("a") is limits.Verdict.OVER_ADDRESS_CAP
    assert lim.acquire("b") is limits.Verdict.ACCEPTED
    lim.release("a")
    assert lim.acquire("a") is limits.Verdict.ACCEPTED


def test_a_per_address_cap_added_by_reload_knows_what_each_address_holds():
    lim = limits.ConnectionLimiter(0, 0)
    for _ in range(3):
        lim.acquire("a")
    lim.reconfigure(0, 2)
    assert lim.acquire("a") is limits.Verdict.OVER_ADDRESS_CAP
    for _ in range(2):
        lim.release("a")
    assert lim.acquire("a") is limits.Verdict.ACCEPTED
