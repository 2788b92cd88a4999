"""EditSpecialists: online RLAIF fine-tuning of InstructPix2Pix into image-editing specialists.

``from editspecialists import EditSpecialistPipeline`` loads and applies a trained specialist of
either editor family (:mod:`editspecialists.specialist.pipeline`); importing the package alone
loads no model library.
"""

__all__ = ["EditSpecialistPipeline", "KontextSpecialistPipeline"]


def __getattr__(name: str):
    if name in __all__:
        from editspecialists.specialist import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'editspecialists' has no attribute {name!r}")
