"""scripts/scheme_diagnostics.py: one cosine by hand, and the script end to end on a tiny input."""
import math

import pytest
import torch

from scripts import scheme_diagnostics as diag


def test_drgrpo_cosine_with_grpo_by_hand():
    rewards = torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]])
    lengths = torch.tensor([[2.0, 4, 4, 4], [2.0, 2, 4, 4]])
    batch = diag.Batch(rewards=rewards, lengths=lengths, correct=rewards > 0.5)
    result = diag.diagnose({"drgrpo": diag.SchemeConfig(name="drgrpo")}, [], [batch], G=4, max_len=8)
    # per token (common factors dropped): GRPO A / |o| with unbiased std, prompt 0: A = 1.5, -0.5 (std 0.5),
    # prompt 1: A = +-sqrt(3)/2 (std 1/sqrt(3)); Dr.GRPO: r - mean = 0.75, -0.25 and +-0.5.
    #   sum |o| c g:  2 (0.75)(0.75) + 12 (0.125)(0.25) + 4 (sqrt(3)/4)(0.5) + 8 (sqrt(3)/8)(0.5) = 1.5 + sqrt(3)
    #   sum |o| g^2:  2 (0.5625) + 12 (0.015625) + 4 (3/16) + 8 (3/64) = 2.4375
    #   sum |o| c^2:  2 (0.5625) + 12 (0.0625) + 4 (0.25) + 8 (0.25) = 4.875
    expected = (1.5 + math.sqrt(3)) / math.sqrt(2.4375 * 4.875)  # 0.9376
    assert result["drgrpo"]["cos_token"] == pytest.approx(expected, rel=1e-5)
    assert result["grpo"]["cos_token"] == pytest.approx(1.0)
    # per response: |o_i| c_i; GRPO's is A_i (|o| cancels), Dr.GRPO's |o_i| (r_i - mean)
    g = torch.tensor([1.5, -0.5, -0.5, -0.5, math.sqrt(3) / 2, math.sqrt(3) / 2, -math.sqrt(3) / 2, -math.sqrt(3) / 2])
    c = torch.tensor([1.5, -1.0, -1.0, -1.0, 1.0, 1.0, -2.0, -2.0])
    assert result["drgrpo"]["cos_response"] == pytest.approx(float(g @ c / (g.norm() * c.norm())), rel=1e-5)
    # bucket shares of sum |o| |c|: k = 1 holds 2 (0.75) + 12 (0.25) = 4.5, k = 2 holds 4 (0.5) + 8 (0.5) = 6
    share = result["drgrpo"]["share"]
    assert share[1] == pytest.approx(4.5 / 10.5) and share[2] == pytest.approx(6 / 10.5)


def test_script_prints_every_scheme(capsys):
    result = diag.main(["--G", "4", "--P", "6", "--warmup", "3", "--batches", "2", "--max-len", "40",
                        "--len-correct", "10", "--len-incorrect", "20"])
    out = capsys.readouterr().out
    assert set(result) == set(diag.VARIANTS) | {"grpo"} and "blind_hard" in result
    for name, r in result.items():
        assert f"\n{name} " in out
        assert -1.0 <= r["cos_token"] <= 1.0 + 1e-9 and -1.0 <= r["cos_response"] <= 1.0 + 1e-9
        assert float(r["share"].sum()) == pytest.approx(1.0)
        assert float(r["share"][0]) == float(r["share"][4]) == 0.0  # all-equal groups: A = 0
    assert float(result["blind_hard"]["share"][1]) == 0.0  # k <= G / 4 dropped
