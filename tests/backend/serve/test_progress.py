"""The service's record of its requests, alone: the wait a full queue announces, the jobs a stop cancels."""

from __future__ import annotations

from segearth_backend.serve.progress import Job, JobBoard, seconds_until_free


def _running(windows_done: int, windows_total: int, since: float, pixels: int = 0) -> Job:
    job = Job("r", pixels=pixels)
    job.update("running", windows_done, windows_total)
    job.running_since = since
    return job


def test_the_wait_follows_the_windows_done_so_far():
    # 10 of 40 windows in 5 s: 15 s left; the job of 30 s left is not the first to free a place.
    jobs = [_running(10, 40, since=100.0), _running(1, 7, since=103.0)]
    assert seconds_until_free(jobs, None, fallback=1.0, now=105.0) == 12.0
    assert seconds_until_free(jobs[:1], None, fallback=1.0, now=105.0) == 15.0


def test_before_its_first_windows_the_measured_speed_says_how_long():
    job = _running(0, 0, since=100.0, pixels=2_000_000)
    assert seconds_until_free([job], seconds_per_megapixel=4.0, fallback=1.0, now=103.0) == 5.0
    assert seconds_until_free([job], seconds_per_megapixel=None, fallback=7.5, now=103.0) == 7.5


def test_waiting_jobs_and_an_empty_board_use_the_fallback():
    assert seconds_until_free([Job("queued")], 4.0, fallback=3.0, now=1.0) == 3.0
    assert seconds_until_free([], 4.0, fallback=2.0) == 2.0
    late = _running(40, 40, since=100.0)
    assert seconds_until_free([late], None, fallback=9.0, now=200.0) == 0.0


def test_a_stop_cancels_the_queued_and_running_jobs_only():
    board = JobBoard()
    queued, running, done = board.open("q"), board.open("r"), board.open("d")
    assert queued is not None and running is not None and done is not None
    running.update("running", 1, 4)
    board.close(done, "done")
    assert board.cancel_active() == 2
    assert queued.cancel.is_set() and running.cancel.is_set() and not done.cancel.is_set()
    assert running.running_since is not None and queued.running_since is None
