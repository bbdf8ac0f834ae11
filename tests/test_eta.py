"""The training ETA leaves the first step's one-off costs out of the rate."""

from nfsd_server.eta import EtaClock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_first_steps_warm_up_does_not_inflate_the_eta():
    clock = FakeClock()
    eta = EtaClock(clock)
    clock.now = 10.0  # step 1: 10 s of warm-up
    eta.step_done(1)
    assert eta.eta_s(1, 100) is None  # no steady step timed yet: unknown, not a guess
    for step in (2, 3, 4, 5):
        clock.now += 1.0  # steady steps: 1 s each
        eta.step_done(step)
    # 4 steady steps in 4 s → 95 left at 1 s; the old average (14 s / 5 steps) said 266 s
    assert eta.eta_s(5, 100) == 95.0


def test_a_resumed_loop_times_from_its_own_first_step():
    clock = FakeClock()
    eta = EtaClock(clock)
    eta.step_done(301)  # resumed at step 300
    clock.now = 4.0
    assert eta.eta_s(303, 400) == 2.0 * 97
