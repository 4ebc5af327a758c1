"""Weight-space interpolation between a base model and its fine-tune (WiSE-FT).

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models": the model with weights
``(1 - alpha) * base + alpha * fine_tuned`` keeps much of what the base knew outside the
fine-tuning domain while keeping most of the in-domain gain. ``alpha = 1`` is the fine-tune,
``alpha = 0`` the base. Nothing is trained: a mix is built in a second and evaluated.

    mixed = interpolate(base_model, tuned_model, 0.7)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from trainers.errors import ModelError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def interpolate(
    base: SentenceTransformer, tuned: SentenceTransformer, alpha: float
) -> SentenceTransformer:
    """A copy of ``tuned`` whose floating-point weights are ``(1-alpha)*base + alpha*tuned``.

    The two must be the same architecture (a fine-tune of ``base``); anything that is not a
    float tensor (position ids, counters) is taken from ``tuned``.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha}: a mixing factor is in [0, 1]")
    base_state, tuned_state = base.state_dict(), tuned.state_dict()
    if base_state.keys() != tuned_state.keys():
        missing = sorted(base_state.keys() ^ tuned_state.keys())[:3]
        raise ModelError(f"cannot interpolate models of different architectures (e.g. {missing})")
    mixed_state = {}
    for key, weight in tuned_state.items():
        if weight.is_floating_point():
            if weight.shape != base_state[key].shape:
                raise ModelError(
                    f"cannot interpolate {key}: shapes {base_state[key].shape} vs {weight.shape}"
                )
            mixed_state[key] = base_state[key].to(weight) * (1 - alpha) + weight * alpha
        else:
            mixed_state[key] = weight
    mixed = copy.deepcopy(tuned)
    mixed.load_state_dict(mixed_state)
    return mixed
