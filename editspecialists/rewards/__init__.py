"""AI feedback (docs/method.md §4): frozen vision models turned into per-edit scores.

- :mod:`~editspecialists.rewards.registry`: named scores, :class:`FeedbackBatch`, :func:`build_scorer`.
- :mod:`~editspecialists.rewards.needs`: the feedback models a score declares (:class:`ModelNeed`).
- :mod:`~editspecialists.rewards.masks`: Grounded-SAM2 object masks by name.
- :mod:`~editspecialists.rewards.depth`: Depth Anything and the structural score.
- :mod:`~editspecialists.rewards.features`: patch embedders (DreamSim, DINOv2, CLIP).
- :mod:`~editspecialists.rewards.semantic`: the semantic score and reconstruction term (pure tensors).
"""

from editspecialists.rewards.needs import ModelNeed
from editspecialists.rewards.registry import SCORES, FeedbackBatch, Scorer, ScoreSpec, build_scorer, register_score

__all__ = ["SCORES", "FeedbackBatch", "ModelNeed", "ScoreSpec", "Scorer", "build_scorer", "register_score"]
