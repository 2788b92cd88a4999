"""EditSpecialists: online RLAIF fine-tuning of InstructPix2Pix into image-editing specialists.

``from editspecialists import EditSpecialistPipeline`` loads and applies a trained specialist
(:mod:`editspecialists.specialist.pipeline`); importing the package alone loads no model library.
"""

__all__ = ["EditSpecialistPipeline"]


def __getattr__(name: str):
    if name == "EditSpecialistPipeline":
        from editspecialists.specialist.pipeline import EditSpecialistPipeline

        return EditSpecialistPipeline
    raise AttributeError(f"module 'editspecialists' has no attribute {name!r}")
