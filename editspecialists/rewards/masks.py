"""Object masks by name (Grounded-SAM2, docs/method.md §4): Grounding DINO boxes → SAM2 masks → union.

Names are data: ``"red sports car"`` is sent to the detector as the phrase ``"red sports car."``.
An image where nothing scores above the box threshold *falls back* (``reward.mask_fallback``):
``"whole_box"`` (the original) prompts SAM2 with the whole-image box ``[0, 0, W, H]``; ``"ones"``
takes the whole image as the mask without calling SAM2. Either way the image is reported in
:attr:`Masks.fallback`. ``whole_frame=True`` gives all-ones masks without running any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from editspecialists.rewards.images import check_images


def whole_frame_masks(images: torch.Tensor) -> torch.Tensor:
    """All-True masks ``(B, H, W)`` for images ``(B, 3, H, W)``."""
    return torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)


def detector_prompt(name: str) -> str:
    """Grounding DINO's phrase format: lowercase, ending with a period."""
    phrase = name.strip().lower().rstrip(".").strip()
    if not phrase:
        raise ValueError(f"object name must be non-empty, got {name!r}")
    return phrase + "."


def per_image_names(names: str | list[str], count: int) -> list[str]:
    """One name per image: a single string is repeated; a list must have ``count`` entries."""
    if isinstance(names, str):
        return [names] * count
    if len(names) != count:
        raise ValueError(f"got {len(names)} names for {count} images")
    return list(names)


def pad_boxes(boxes: list[torch.Tensor]) -> list[list[list[float]]]:
    """Equal box counts per image (SAM2's processor needs them) by repeating each image's first box.

    Repeats do not change the union of an image's masks.
    """
    most = max(len(image_boxes) for image_boxes in boxes)
    return [image_boxes.tolist() + [image_boxes[0].tolist()] * (most - len(image_boxes)) for image_boxes in boxes]


def whole_image_box_where_none(boxes: list[torch.Tensor], height: int, width: int) -> list[torch.Tensor]:
    """Each image's boxes ``(N_i, 4)``; an image without any gets the whole-image box ``[0, 0, W, H]``."""
    whole = torch.tensor([[0.0, 0.0, width, height]])
    return [image_boxes if len(image_boxes) else whole for image_boxes in boxes]


def detector_inputs(processor, images: torch.Tensor, names: list[str]):
    """Grounding DINO's processor outputs (CPU) for images ``(B, 3, H, W)`` in [0, 1] and one name each."""
    prompts = [detector_prompt(name) for name in names]
    return processor(images=list(images.float().cpu()), text=prompts, padding="longest", do_rescale=False,
                     return_tensors="pt")


def segmenter_inputs(processor, images: torch.Tensor, boxes: list[torch.Tensor]):
    """SAM2's processor outputs (CPU) for images ``(B, 3, H, W)`` in [0, 1] and their boxes
    ``(N_i, 4)`` xyxy in pixels (padded to one count, :func:`pad_boxes`)."""
    return processor(images=list(images.float().cpu()), input_boxes=pad_boxes(boxes), do_rescale=False,
                     return_tensors="pt")


MASK_FALLBACKS = ("whole_box", "ones")
BOXES_PER_CALL = 16  # boxes per image that SAM2 decodes at once (MaskPredictor.segment)
MASK_KEYS = ("models.detector", "models.segmenter")  # config keys of the detector and segmenter


@dataclass
class Masks:
    """Masks ``(B, H, W)`` bool on the images' device, and ``fallback`` ``(B,)`` bool on the CPU:
    True where the detector found nothing and the mask is the fallback's. ``boxes`` / ``scores``:
    per image, the detector's boxes ``(N_i, 4)`` xyxy in pixels and their scores ``(N_i,)`` (CPU;
    empty lists where no detector ran)."""

    masks: torch.Tensor
    fallback: torch.Tensor
    boxes: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)

    @staticmethod
    def cat(parts: list["Masks"]) -> "Masks":
        """The masks of consecutive chunks of images as one."""
        return Masks(torch.cat([p.masks for p in parts]), torch.cat([p.fallback for p in parts]),
                     [box for p in parts for box in p.boxes], [score for p in parts for score in p.scores])


class MaskPredictor:
    """:class:`Masks` of a named object in images ``(B, 3, H, W)`` in [0, 1]."""

    def __init__(self, detector, detector_processor, segmenter, segmenter_processor, *, device: torch.device,
                 dtype: torch.dtype, box_threshold: float, text_threshold: float):
        self.detector, self.detector_processor = detector, detector_processor
        self.segmenter, self.segmenter_processor = segmenter, segmenter_processor
        self.device, self.dtype = device, dtype
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    @classmethod
    def from_pretrained(cls, detector_id: str, segmenter_id: str, *, device="cpu", dtype: torch.dtype = torch.float32,
                        box_threshold: float = 0.4, text_threshold: float = 0.3) -> "MaskPredictor":
        """Grounding DINO (``detector_id``) and SAM2 (``segmenter_id``) with their processors.

        The SAM2 repos (``facebook/sam2-hiera-large``, ``facebook/sam2.1-hiera-large``) are
        published as video models (``model_type: "sam2_video"``, ``Sam2VideoProcessor``), which
        ``AutoModel``/``AutoProcessor`` would load as such; box prompting on single images needs
        the image model ``Sam2Model`` (mask-generation mapping; the memory weights are skipped) and
        ``Sam2Processor`` (the repo's image processor and ``target_size``).
        """
        from transformers import AutoModelForMaskGeneration, AutoModelForZeroShotObjectDetection, AutoProcessor
        from transformers import Sam2Processor

        detector = AutoModelForZeroShotObjectDetection.from_pretrained(detector_id, dtype=dtype).to(device).eval()
        segmenter = AutoModelForMaskGeneration.from_pretrained(segmenter_id, dtype=dtype).to(device).eval()
        return cls(detector, AutoProcessor.from_pretrained(detector_id), segmenter,
                   Sam2Processor.from_pretrained(segmenter_id), device=torch.device(device), dtype=dtype,
                   box_threshold=box_threshold, text_threshold=text_threshold)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, names: str | list[str], fallback: str = "whole_box") -> Masks:
        """Union of the SAM2 masks of every box found for the image's name; where none is found,
        ``fallback``: SAM2 on the whole-image box (``"whole_box"``) or the whole image (``"ones"``)."""
        if fallback not in MASK_FALLBACKS:
            raise ValueError(f"mask fallback must be one of {MASK_FALLBACKS}, got {fallback!r}")
        check_images(images)
        boxes, scores = self.detect(images, per_image_names(names, len(images)))
        missed = torch.tensor([len(image_boxes) == 0 for image_boxes in boxes])
        if fallback == "whole_box":
            masks = self.segment(images, whole_image_box_where_none(boxes, *images.shape[-2:]))
            return Masks(masks.to(images.device), missed, boxes, scores)
        masks = whole_frame_masks(images)
        found = (~missed).nonzero().flatten().tolist()
        if found:
            masks[found] = self.segment(images[found], [boxes[i] for i in found]).to(masks.device)
        return Masks(masks, missed, boxes, scores)

    def detect(self, images: torch.Tensor, names: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image, boxes ``(N_i, 4)`` xyxy in pixels (clamped to the image) and their scores
        ``(N_i,)``, from one detector call."""
        height, width = images.shape[-2:]
        inputs = detector_inputs(self.detector_processor, images, names)
        outputs = self.detector(**self.on_device(inputs))
        results = self.detector_processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(height, width)] * len(images),
        )
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        return ([torch.minimum(r["boxes"].float().cpu().clamp_min(0), limits) for r in results],
                [r["scores"].float().cpu() for r in results])

    def segment(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Union over each image's boxes of SAM2's single-mask output, ``(B, H, W)`` bool.

        The images are encoded once; the boxes are decoded :data:`BOXES_PER_CALL` per image at a
        time, so that memory stays bounded however many boxes the detector finds (each mask is
        upsampled to SAM2's 1024 px frame before it is cut to the image).
        """
        inputs = segmenter_inputs(self.segmenter_processor, images, boxes)
        embeddings = self.segmenter.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        union = torch.zeros(len(images), *images.shape[-2:], dtype=torch.bool)
        for chunk in inputs["input_boxes"].split(BOXES_PER_CALL, dim=1):
            outputs = self.segmenter(image_embeddings=embeddings, input_boxes=chunk.to(self.device),
                                     multimask_output=False)
            masks = self.segmenter_processor.post_process_masks(outputs.pred_masks.float().cpu(),
                                                                inputs["original_sizes"])
            union |= torch.stack([image_masks.flatten(0, 1).any(dim=0) for image_masks in masks])
        return union

    def on_device(self, inputs) -> dict[str, torch.Tensor]:
        """Processor outputs on the model's device; floating tensors in the model's dtype."""
        return {key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
                for key, value in inputs.items()}
