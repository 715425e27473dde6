"""The training-aware reward of EfficientNetV2's search (paper section 3.3): A * S^w * P^v.

A is the held-out accuracy of the proxy-trained candidate, S its train step time, P its
parameter count. With w < 0 and v < 0 a slower or bigger network needs more accuracy for the same
reward: w = -0.07 and v = -0.05 (the paper's values, "empirically determined to balance the
trade-offs similar to (Tan et al., 2019a)"). Only the ranking of candidates matters, so the units
of S and P (seconds, a count) just scale every reward alike.
"""

from __future__ import annotations

import math

PAPER_W = -0.07   # exponent of the training step time S
PAPER_V = -0.05   # exponent of the parameter count P


def check_exponents(w: float, v: float) -> None:
    """Fails unless w and v are finite and <= 0 (a cost must not raise the reward)."""
    for name, value, paper in (("w", w, PAPER_W), ("v", v, PAPER_V)):
        if not math.isfinite(value) or value > 0:
            raise ValueError(f"reward exponent {name}={value!r} must be finite and <= 0: a "
                             f"{'slower' if name == 'w' else 'bigger'} network must not score "
                             f"higher (the paper uses {name}={paper})")


def reward(accuracy: float, step_seconds: float, params: int, *, w: float = PAPER_W,
           v: float = PAPER_V) -> float:
    """A * S^w * P^v.

    Args:
      accuracy: held-out top-1 in [0, 1].
      step_seconds: train step time in seconds (> 0).
      params: trainable parameters (> 0).
      w, v: exponents of S and P (<= 0).
    """
    check_exponents(w, v)
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy!r} must be in [0, 1]")
    if not step_seconds > 0 or not math.isfinite(step_seconds):
        raise ValueError(f"step_seconds={step_seconds!r} must be a positive number of seconds")
    if params < 1:
        raise ValueError(f"params={params!r} must be >= 1")
    return accuracy * step_seconds ** w * float(params) ** v
