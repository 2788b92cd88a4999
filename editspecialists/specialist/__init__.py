"""Using a trained specialist: :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`
(load and edit one image), its self-contained export (folder.py, model_card.py) and the editing
app (app.py)."""
