"""Object masks by name (Grounded-SAM2, SPEC §4): Grounding DINO boxes → SAM2 masks → union.

Names are data: ``"red sports car"`` is sent to the detector as the phrase ``"red sports car."``.
An image where nothing scores above the box threshold gets the whole image as its mask;
``whole_frame=True`` gives all-ones masks without running any model.
"""

from __future__ import annotations

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


class MaskPredictor:
    """Masks ``(B, H, W)`` bool of a named object in images ``(B, 3, H, W)`` in [0, 1]."""

    def __init__(self, detector, detector_processor, segmenter, segmenter_processor, *, device: torch.device,
                 dtype: torch.dtype, box_threshold: float, text_threshold: float):
        self.detector, self.detector_processor = detector, detector_processor
        self.segmenter, self.segmenter_processor = segmenter, segmenter_processor
        self.device, self.dtype = device, dtype
        self.box_threshold, self.text_threshold = box_threshold, text_threshold

    @classmethod
    def from_pretrained(cls, detector_id: str, segmenter_id: str, *, device="cpu", dtype: torch.dtype = torch.float32,
                        box_threshold: float = 0.4, text_threshold: float = 0.3) -> "MaskPredictor":
        """Grounding DINO (``detector_id``) and SAM2 (``segmenter_id``) with their processors."""
        from transformers import AutoModel, AutoModelForZeroShotObjectDetection, AutoProcessor

        detector = AutoModelForZeroShotObjectDetection.from_pretrained(detector_id, dtype=dtype).to(device).eval()
        segmenter = AutoModel.from_pretrained(segmenter_id, dtype=dtype).to(device).eval()
        return cls(detector, AutoProcessor.from_pretrained(detector_id), segmenter,
                   AutoProcessor.from_pretrained(segmenter_id), device=torch.device(device), dtype=dtype,
                   box_threshold=box_threshold, text_threshold=text_threshold)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, names: str | list[str]) -> torch.Tensor:
        """Union of the SAM2 masks of every box found for the image's name; whole image if none."""
        check_images(images)
        masks = whole_frame_masks(images)
        boxes = self.detect(images, per_image_names(names, len(images)))
        found = [i for i, image_boxes in enumerate(boxes) if len(image_boxes)]
        if found:
            masks[found] = self.segment(images[found], [boxes[i] for i in found]).to(masks.device)
        return masks

    def detect(self, images: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        """Boxes ``(N_i, 4)`` xyxy in pixels (clamped to the image) per image, one detector call."""
        height, width = images.shape[-2:]
        prompts = [detector_prompt(name) for name in names]
        inputs = self.detector_processor(images=list(images.float().cpu()), text=prompts, padding="longest",
                                         do_rescale=False, return_tensors="pt")
        outputs = self.detector(**self.on_device(inputs))
        results = self.detector_processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(height, width)] * len(images),
        )
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        return [torch.minimum(r["boxes"].float().cpu().clamp_min(0), limits) for r in results]

    def segment(self, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
        """Union over each image's boxes of SAM2's single-mask output, ``(B, H, W)`` bool, one call."""
        inputs = self.segmenter_processor(images=list(images.float().cpu()), input_boxes=pad_boxes(boxes),
                                          do_rescale=False, return_tensors="pt")
        outputs = self.segmenter(pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                                 input_boxes=inputs["input_boxes"].to(self.device), multimask_output=False)
        masks = self.segmenter_processor.post_process_masks(outputs.pred_masks.float().cpu(), inputs["original_sizes"])
        return torch.stack([image_masks.flatten(0, 1).any(dim=0) for image_masks in masks])

    def on_device(self, inputs) -> dict[str, torch.Tensor]:
        """Processor outputs on the model's device; floating tensors in the model's dtype."""
        return {key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
                for key, value in inputs.items()}
