"""scripts/trl_learn.py's pieces, by hand (the script itself needs TRL and runs by hand): the check that TRL
scored train.py's draws, the time to a held-out threshold, and the ratio over seeds. That the draws are
train.py's: tests/test_train.py (only train.py's own tests import it)."""
import math
from pathlib import Path

import pytest

from config import load_config
from scripts import trl_learn
from scripts.stats import t_quantile

ROOT = Path(__file__).resolve().parents[1]


def test_drawn_prompts_refuses_a_stream_that_reads_the_rewards():
    cfg = load_config(ROOT / "configs/experiments/smol_levels.yaml")
    with pytest.raises(SystemExit, match="draws prompts by the rewards"):
        trl_learn.drawn_prompts(cfg)


def test_same_prompts_checks_order_and_each_prompt_g_times():
    drawn = [{"problem": "a"}, {"problem": "b"}]
    assert trl_learn.same_prompts([["a", "a"], ["b", "b"]], drawn, G=2)
    assert trl_learn.same_prompts([["a", "a", "b", "b"]], drawn, G=2)     # one reward call for the step
    assert not trl_learn.same_prompts([["b", "b"], ["a", "a"]], drawn, G=2)  # another order
    assert not trl_learn.same_prompts([["a", "a"]], drawn, G=2)              # a step missing
    assert not trl_learn.same_prompts([["a", "b"], ["a", "b"]], drawn, G=2)  # not G of each together


def test_time_to_threshold_is_the_first_checkpoint_at_or_above_it():
    recs = [{"step": i + 1, "time/step": t} for i, t in enumerate([10.0, 20.0, 5.0, 7.0])]
    seconds_at = trl_learn.cumulative_seconds(recs)
    assert seconds_at == {1: 10.0, 2: 30.0, 3: 35.0, 4: 42.0}
    curve = {2: 0.30, 4: 0.50}  # checkpoints every 2 steps
    assert trl_learn.time_to(curve, seconds_at, 0.30) == {"step": 2, "seconds": 30.0}  # "at" counts
    assert trl_learn.time_to(curve, seconds_at, 0.31) == {"step": 4, "seconds": 42.0}
    assert trl_learn.time_to(curve, seconds_at, 0.51) is None


def test_ratio_over_seeds_is_a_t_interval_of_the_log_ratios():
    g, lo, hi = trl_learn.ratio_over_seeds([0.25, 0.5])
    assert g == pytest.approx(math.sqrt(0.125))  # the geometric mean
    # logs -ln 4 and -ln 2: their standard deviation is ln 2 / sqrt 2, the half-width t * sd / sqrt 2 = t ln 2 / 2
    half = t_quantile(0.975, 1) * math.log(2) / 2
    assert (lo, hi) == pytest.approx((g * math.exp(-half), g * math.exp(half)))
    assert math.isnan(trl_learn.ratio_over_seeds([0.5])[1])
