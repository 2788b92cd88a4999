"""Using a trained specialist: :class:`~editspecialists.specialist.pipeline.EditSpecialistPipeline`
(load and edit one image; a FLUX.1 Kontext one is a
:class:`~editspecialists.specialist.kontext_pipeline.KontextSpecialistPipeline`, what they share in
base.py), its self-contained export (format in :mod:`editspecialists.formats.export`;
model_card.py) and the editing app (app.py)."""
