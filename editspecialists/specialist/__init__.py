"""Using a trained specialist: :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`
(load and edit one image), its self-contained export (format in :mod:`editspecialists.formats.export`;
model_card.py) and the editing app (app.py)."""
