"""AI feedback: frozen vision models turned into per-edit scores (see registry)."""

from editspecialists.rewards.registry import SCORES, FeedbackBatch, Scorer, build_scorer, register_score

__all__ = ["SCORES", "FeedbackBatch", "Scorer", "build_scorer", "register_score"]
