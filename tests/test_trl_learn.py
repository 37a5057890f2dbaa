"""scripts/trl_learn.py: the time to a threshold, by hand (the script itself needs TRL and runs by hand)."""

from scripts import trl_learn


def test_time_to_threshold_sums_step_seconds_up_to_the_first_window_mean_at_threshold():
    recs = [{"step": i + 1, "score_mean": a, "time/step": t}
            for i, (a, t) in enumerate([(0.0, 10.0), (0.6, 20.0), (0.3, 5.0), (0.9, 7.0), (0.9, 1.0)])]
    # 2-step means: 0.0, 0.3, 0.45, 0.6, 0.9 -> 0.44 first reached at step 3, after 10 + 20 + 5 seconds
    assert trl_learn.time_to(recs, 0.44, smooth=2) == {"step": 3, "seconds": 35.0}
    # 3-step means (the first windows shorter): 0.0, 0.3, 0.3, 0.6, 0.7 -> 0.55 at step 4, 42 s
    assert trl_learn.time_to(recs, 0.55, smooth=3) == {"step": 4, "seconds": 42.0}
    assert trl_learn.time_to(recs, 0.95, smooth=1) is None
