"""Phase timings: exclusive nesting, the residual `other`, and no-op without a recording."""

import threading
import time

import pytest

from core.timing import Timings, phase, recording


def test_inner_phase_pauses_the_outer_one():
    with recording() as timings:
        with phase("train"):
            time.sleep(0.05)
            with phase("evaluate"):
                time.sleep(0.1)
                with phase("evaluate"):  # the same phase inside goes on, not counted twice
                    time.sleep(0.02)
            time.sleep(0.05)
        with phase("evaluate"):
            time.sleep(0.02)
    out = timings.as_dict(total_seconds=1.0)
    assert list(out) == ["train", "evaluate", "other"]
    assert out["train"]["count"] == 1 and out["evaluate"]["count"] == 2
    assert out["train"]["seconds"] == pytest.approx(0.1, abs=0.04)
    assert out["evaluate"]["seconds"] == pytest.approx(0.14, abs=0.04)
    phases = out["train"]["seconds"] + out["evaluate"]["seconds"]
    assert out["other"]["seconds"] == pytest.approx(1.0 - phases, abs=0.002)


def test_residual_is_never_negative_and_errors_close_the_phase():
    with recording() as timings:
        with pytest.raises(ValueError), phase("io"):
            time.sleep(0.01)
            raise ValueError
        with phase("convert"):
            pass
    out = timings.as_dict(total_seconds=0.0)
    assert out["other"] == {"seconds": 0.0}
    assert out["io"]["count"] == 1 and out["convert"]["count"] == 1
    assert timings._stack == []


def test_phase_without_recording_or_in_another_thread_is_a_no_op():
    with phase("train"):  # nothing records
        pass

    @phase("verify")
    def work():
        return 7

    seen = []
    with recording() as timings:
        thread = threading.Thread(target=lambda: seen.append(work()))
        thread.start()
        thread.join()
        assert work() == 7
    assert seen == [7]
    assert timings.counts == {"verify": 1}
    assert Timings().as_dict(2.0) == {"other": {"seconds": 2.0}}
