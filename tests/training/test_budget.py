"""Budget schedules: warm-up and decay factors, progress from steps or wall time, fused Adam."""

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from drivesim.training.budget import budget_progress, check_schedule, lr_factor, make_adam


def test_lr_factor_warms_up_then_decays_over_the_last_fraction():
    assert lr_factor(0, 0.0, warmup_steps=4) == pytest.approx(0.25)
    assert lr_factor(3, 0.1, warmup_steps=4) == 1.0
    # decay over the last 30% of the budget, linear, floored at min_ratio
    assert lr_factor(100, 0.6, decay_fraction=0.3) == 1.0
    assert lr_factor(100, 0.85, decay_fraction=0.3) == pytest.approx(0.5)
    assert lr_factor(100, 1.0, decay_fraction=0.3, min_ratio=0.02) == pytest.approx(0.02)
    # both at once multiply
    assert lr_factor(1, 0.85, warmup_steps=4, decay_fraction=0.3) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_factor(0, 0.5, decay_fraction=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        check_schedule(-1, 0.0)


class _FakeTrainer:
    def __init__(self, global_step: int, max_steps: int, callbacks=()) -> None:
        self.global_step, self.max_steps, self.callbacks = global_step, max_steps, list(callbacks)


class _FakeTimer(Timer):
    def __init__(self, elapsed: float, remaining: float) -> None:
        super().__init__(duration="00:00:10:00")
        self._e, self._r = elapsed, remaining

    def time_elapsed(self, stage="train"):
        return self._e

    def time_remaining(self, stage="train"):
        return self._r


def test_budget_progress_is_the_larger_of_steps_and_time():
    assert budget_progress(None) == 0.0
    assert budget_progress(_FakeTrainer(25, -1)) == 0.0            # unbounded: never decays
    assert budget_progress(_FakeTrainer(25, 100)) == pytest.approx(0.25)
    # the time budget ends first: it sets the progress
    assert budget_progress(_FakeTrainer(25, 100, [_FakeTimer(45.0, 15.0)])) == pytest.approx(0.75)
    # the step budget ends first
    assert budget_progress(_FakeTrainer(90, 100, [_FakeTimer(10.0, 50.0)])) == pytest.approx(0.9)
    assert budget_progress(_FakeTrainer(150, 100)) == 1.0           # clamped


def test_make_adam_is_fused_on_cpu_and_matches_the_reference_update():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    fused = make_adam(a.parameters(), 1e-2, (0.9, 0.99), weight_decay=0.01, decoupled=True)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)
    assert fused.defaults.get("fused") is True
    x = torch.randn(16, 5)
    for _ in range(5):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
