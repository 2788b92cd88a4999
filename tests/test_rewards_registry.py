"""The score registry and scorer: validation, shared masks, and every score end to end on the tiny
feedback models loaded from disk through the configured ids."""

import contextlib

import pytest
import torch

from editspecialists.rewards import SCORES, FeedbackBatch, build_scorer, register_score, registry
from editspecialists.rewards.depth import DepthEstimator
from editspecialists.rewards.features import load_patch_embedder
from editspecialists.rewards.masks import MaskPredictor, Masks
from editspecialists.rewards.needs import DEPTH
from editspecialists.rewards.semantic import downsample_mask, patch_distance, reconstruction_outside
from editspecialists.demo import feedback_standins
from tests.helpers import demo_scenes, load_config

B, G, H, W = 2, 3, 48, 64


@pytest.fixture(scope="module")
def folders(tiny_root):
    return feedback_standins.build_all(tiny_root)


def feedback_config(folders, **reward):
    config = load_config("base")
    config.models.update(
        detector=folders["detector"], segmenter=folders["segmenter"], depth=folders["depth"],
        dreamsim=folders["dreamsim"], dreamsim_cache=folders["dreamsim"], semantic_dinov2=folders["dinov2"],
        clip=folders["clip"],
    )
    config.input_name, config.style_name = "red sports car", "lego"
    config.reward.weights = {"structural": 1.0, "semantic": 1.0, "brightness": 1.0}
    config.reward.batch_size = 4
    config.reward.update(reward)
    return config


def make_images(seed=0):
    """Demo scenes as inputs, brick walls as styles, random edits (one of them unchanged)."""
    generator = torch.Generator().manual_seed(seed)
    inputs, styles = demo_scenes(B, H, W, seed)
    edits = torch.rand(B, G, 3, H, W, generator=generator)
    for b in range(B):
        edits[b, b] = inputs[b]  # unchanged edits, at a different position for each input
    return edits, inputs, styles


UNCHANGED = torch.eye(B, G, dtype=torch.bool)


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry for scores registered by a test (the real one is left untouched)."""
    monkeypatch.setattr(registry, "SCORES", dict(SCORES))
    return registry.SCORES


def test_directions_of_the_registered_scores():
    assert SCORES["structural"].lower_is_better and SCORES["semantic"].lower_is_better
    assert not SCORES["brightness"].lower_is_better
    assert SCORES["semantic"].needs_masks and not SCORES["structural"].needs_masks


def ok():
    return torch.rand(2, 3, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)


@pytest.mark.parametrize("change, message", [
    (lambda e, i, s: (e[:, 0], i, s), r"edits must have shape \(B, G, 3, H, W\), got \(2, 3, 8, 8\)"),
    (lambda e, i, s: (e, i[:, :1], s), r"inputs must have shape \(B, 3, H, W\), got \(2, 1, 8, 8\)"),
    (lambda e, i, s: (e, torch.cat([i, i[:1]]), s), "inputs holds 3 images but edits are for 2 inputs"),
    (lambda e, i, s: (e, i, s[:1]), "styles holds 1 images but edits are for 2 inputs"),
    (lambda e, i, s: (e, i[..., :6], s), r"edits are \(8, 8\) pixels but inputs are \(8, 6\)"),
    (lambda e, i, s: (e * 2, i, s), r"edits has values outside \[0, 1\]"),
    (lambda e, i, s: (e, i.masked_fill(i > 0.5, float("nan")), s), r"inputs has values outside \[0, 1\]"),
    (lambda e, i, s: (e, i, (s * 255).to(torch.uint8)), "styles must be a float tensor"),
])
def test_bad_batches_are_refused_naming_the_tensor(change, message):
    with pytest.raises(ValueError, match=message):
        FeedbackBatch(*change(*ok()))


def test_a_batch_of_one_and_styles_of_another_size_are_fine():
    edits = torch.full((1, 1, 3, 4, 4), 0.25)
    batch = FeedbackBatch(edits, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 9, 7))
    assert SCORES["brightness"].factory(None, "cpu")(batch).tolist() == [[0.25]]
    assert batch.input_masks.shape == (1, 4, 4) and batch.style_masks.shape == (1, 9, 7)
    assert batch.input_masks.all() and batch.style_masks.all()  # default: whole-image masks


def test_masks_are_computed_once_per_input_and_style_image_and_shared_by_scores(scratch_registry):
    calls = []

    def counting_mask_fn(images, name):
        calls.append((images.shape[0], name))
        return Masks(images[:, 0] > 0.5, torch.zeros(len(images), dtype=torch.bool))

    seen = []
    for name in ("reads_masks_a", "reads_masks_b"):
        @register_score(name, lower_is_better=True, needs_masks=True)
        def factory(config, device):
            def score(batch):
                seen.append((batch.input_masks, batch.style_masks))
                return batch.edits.mean(dim=(2, 3, 4))
            return score

    scores = {name: scratch_registry[name].factory(None, "cpu") for name in ("reads_masks_a", "reads_masks_b")}
    scorer = registry.Scorer(scores, counting_mask_fn, "car", "lego", torch.device("cpu"))
    edits, inputs, styles = make_images()
    scorer(edits, inputs, styles)
    assert sorted(calls) == [(B, "car"), (B, "lego")]  # B images each, not B·G edits
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1]


def test_a_new_score_is_one_decorated_function(folders, scratch_registry):
    @register_score("saturation", lower_is_better=False)
    def saturation(config, device):
        def score(batch: FeedbackBatch) -> torch.Tensor:
            edits = batch.edits  # (B, G, 3, H, W)
            return (edits.amax(dim=2) - edits.amin(dim=2)).mean(dim=(2, 3))
        return score

    config = feedback_config(folders)
    config.reward.weights = {"saturation": 1.0}
    edits, inputs, styles = make_images()
    edits[0, 1] = 0.5  # grey: no saturation
    edits[1, 2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red: saturation 1
    scores = build_scorer(config, "cpu")(edits, inputs, styles)
    assert scores["saturation"][0, 1].item() == 0.0 and scores["saturation"][1, 2].item() == 1.0
    assert not scratch_registry["saturation"].lower_is_better


def test_registering_a_name_twice_is_refused(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_score("brightness", lower_is_better=False)(lambda config, device: None)


def reference_semantic(config, edits, inputs, styles):
    """The semantic score of every edit rebuilt from the public pieces, one input at a time."""
    reward, models = config.reward, config.models
    backbone_id = {"dreamsim": models.dreamsim, "dinov2": models.semantic_dinov2, "clip": models.clip}[
        reward.semantic_backbone]
    embedder = load_patch_embedder(reward.semantic_backbone, backbone_id, device="cpu")
    predictor = MaskPredictor.from_pretrained(models.detector, models.segmenter, device="cpu",
                                              box_threshold=reward.box_threshold, text_threshold=reward.text_threshold)
    scores = torch.zeros(B, G)
    for b in range(B):
        input_mask = predictor(inputs[b : b + 1], config.input_name).masks
        style_mask = predictor(styles[b : b + 1], config.style_name).masks
        style_tokens, style_grid = embedder(styles[b : b + 1])
        for g in range(G):
            tokens, grid = embedder(edits[b, g][None])
            distance = patch_distance(tokens, style_tokens, downsample_mask(input_mask, grid),
                                      downsample_mask(style_mask, style_grid))
            reconstruction = reconstruction_outside(edits[b, g][None], inputs[b : b + 1], input_mask)
            scores[b, g] = distance + reward.rec_lambda * reconstruction
    return scores


@pytest.mark.parametrize("backbone", ["dreamsim", "dinov2", "clip"])
def test_scores_end_to_end_on_tiny_models(folders, backbone):
    config = feedback_config(folders, semantic_backbone=backbone, box_threshold=0.8)
    scorer = build_scorer(config, "cpu")
    edits, inputs, styles = make_images()

    scores = scorer(edits, inputs, styles)

    assert set(scores) == {"structural", "semantic", "brightness"}
    for name, value in scores.items():
        assert value.shape == (B, G) and value.dtype == torch.float32 and torch.isfinite(value).all(), name
        assert not value.is_inference(), name
    assert (scores["structural"][UNCHANGED] == 0).all() and (scores["structural"][~UNCHANGED] > 1e-3).all()
    assert torch.allclose(scores["brightness"], edits.mean(dim=(2, 3, 4)))
    expected = reference_semantic(config, edits, inputs, styles)
    assert torch.allclose(scores["semantic"], expected, atol=1e-5)
    masks = scorer.make_batch(edits, inputs, styles).input_masks
    assert not masks.all() and masks.any(dim=(1, 2)).all()  # real, partial masks were used


def test_reward_batch_size_only_chunks(folders):
    edits, inputs, styles = make_images(1)
    small = build_scorer(feedback_config(folders, batch_size=1), "cpu")(edits, inputs, styles)
    large = build_scorer(feedback_config(folders, batch_size=16), "cpu")(edits, inputs, styles)
    for name in small:
        assert torch.allclose(small[name], large[name], atol=1e-5), name


def test_scale_shift_alignment_keeps_an_unchanged_edit_at_zero(folders):
    edits, inputs, styles = make_images(2)
    scores = build_scorer(feedback_config(folders, structural_align="scale_shift"), "cpu")(edits, inputs, styles)
    structural = scores["structural"]
    assert structural[UNCHANGED].abs().max().item() < 1e-4 and (structural[~UNCHANGED] > 1e-3).all()


def test_whole_frame_needs_no_mask_model_and_uses_all_ones(folders):
    config = feedback_config(folders, rec_lambda=0.0)
    config.whole_frame = True
    config.models.detector = config.models.segmenter = "/nonexistent/mask/model"
    scorer = build_scorer(config, "cpu")
    edits, inputs, styles = make_images(3)
    batch = scorer.make_batch(edits, inputs, styles)
    semantic = scorer.score(batch)["semantic"]
    assert batch.input_masks.all() and batch.style_masks.all()
    embedder = load_patch_embedder("dreamsim", folders["dreamsim"], device="cpu")
    tokens, grid = embedder(edits.flatten(0, 1))
    style_tokens, _ = embedder(styles)
    everywhere = torch.ones(B * G, grid[0] * grid[1], dtype=torch.bool)
    expected = patch_distance(tokens, style_tokens.repeat_interleave(G, 0), everywhere, everywhere).view(B, G)
    assert torch.allclose(semantic, expected, atol=1e-5)


class RecordingAccelerator:
    """Stands in for accelerate.Accelerator: records whether its main_process_first block is open."""

    def __init__(self):
        self.inside = False
        self.entered = 0

    @contextlib.contextmanager
    def main_process_first(self):
        self.inside, self.entered = True, self.entered + 1
        yield
        self.inside = False


def test_models_load_once_per_scorer_inside_main_process_first(folders, monkeypatch, scratch_registry):
    """A model two scores need loads once for the scorer, shared by the scorers of ``only`` (the
    trainer's training and validation scorers); another scorer holds models of its own."""
    accelerator = RecordingAccelerator()
    loads = []
    real = DepthEstimator.from_pretrained.__func__

    def recording_from_pretrained(cls, *args, **kwargs):
        loads.append(accelerator.inside)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(DepthEstimator, "from_pretrained", classmethod(recording_from_pretrained))
    received = []

    @register_score("depth_of_edits", lower_is_better=True, models=[DEPTH])
    def depth_of_edits(config, device, depth):
        received.append(depth)
        return lambda batch: depth(batch.flat_edits).mean(dim=(1, 2)).view(-1, batch.num_edits)

    config = feedback_config(folders)
    config.reward.weights = {"structural": 1.0, "depth_of_edits": 1.0}
    scorer = build_scorer(config, "cpu", accelerator, names=["structural", "depth_of_edits", "brightness"])
    training, validation = scorer.only(["structural", "depth_of_edits"]), scorer.only(["brightness", "structural"])
    assert loads == [True] and accelerator.entered == 1 and not accelerator.inside
    assert [type(model) for model in scorer.feedback_models] == [DepthEstimator]
    assert received[0] is scorer.feedback_models[0]
    assert training.feedback_models == validation.feedback_models == scorer.feedback_models
    edits, inputs, styles = make_images(4)
    assert torch.equal(training(edits, inputs, styles)["structural"], validation(edits, inputs, styles)["structural"])
    other = build_scorer(config, "cpu", accelerator)
    assert loads == [True, True] and other.feedback_models[0] is not scorer.feedback_models[0]


def test_low_precision_feedback_models_give_finite_scores(folders):
    edits, inputs, styles = make_images(5)
    config = feedback_config(folders, box_threshold=0.8)
    full = build_scorer(config, "cpu")(edits, inputs, styles)
    config.reward.dtype = "bf16"
    low = build_scorer(config, "cpu")(edits, inputs, styles)
    for name in full:
        assert low[name].dtype == torch.float32 and torch.isfinite(low[name]).all(), name
    for name in ("structural", "brightness"):  # (bf16 masks of random tiny models may differ)
        assert torch.allclose(low[name], full[name], rtol=0.1, atol=0.05), name


@pytest.mark.parametrize("key, value, message", [
    ("weights", {"structural": 1.0, "aesthetics": 1.0}, r"unknown score\(s\) \['aesthetics'\]"),
    ("dtype", "fp8", "reward.dtype must be one of"),
    ("semantic_backbone", "resnet", "reward.semantic_backbone must be one of"),
    ("mask_fallback", "zeros", r"reward.mask_fallback must be one of \('whole_box', 'ones'\), got 'zeros'"),
])
def test_configuration_mistakes_are_named(folders, key, value, message):
    with pytest.raises(ValueError, match=message):
        build_scorer(feedback_config(folders, **{key: value}), "cpu")


@pytest.mark.parametrize("fallback", ["whole_box", "ones"])
def test_the_scorer_reports_which_images_fell_back(folders, fallback):
    config = feedback_config(folders, box_threshold=1.0, batch_size=1, mask_fallback=fallback)  # finds nothing
    config.reward.weights = {"semantic": 1.0}
    scorer = build_scorer(config, "cpu")
    edits, inputs, styles = make_images(6)
    batch = scorer.make_batch(edits, inputs, styles)
    scorer.score(batch)

    assert scorer.predicts_masks
    fell_back = scorer.take_mask_fallbacks()
    assert {name: flags.tolist() for name, flags in fell_back.items()} == {"red sports car": [True] * B,
                                                                           "lego": [True] * B}
    assert scorer.take_mask_fallbacks() == {}, "each image is reported once"
    predictor = scorer.mask_fn.predictor
    height, width = inputs.shape[-2:]
    whole_box = [torch.tensor([[0.0, 0.0, width, height]])] * B
    # "whole_box" is SAM2's mask of the whole-image box (which a segmenter may well fill), "ones" all-ones.
    expected = predictor.segment(inputs, whole_box) if fallback == "whole_box" else torch.ones_like(batch.input_masks)
    assert torch.equal(batch.input_masks.cpu(), expected.cpu())


def test_whole_frame_scorers_predict_no_masks(folders):
    config = feedback_config(folders)
    config.whole_frame = True
    scorer = build_scorer(config, "cpu")
    scorer(*make_images())
    assert not scorer.predicts_masks and scorer.take_mask_fallbacks() == {}


def test_a_bad_batch_through_the_scorer_names_the_tensor(folders):
    config = feedback_config(folders)
    config.reward.weights = {"brightness": 1.0}
    scorer = build_scorer(config, "cpu")
    edits, inputs, styles = make_images()
    with pytest.raises(ValueError, match="inputs has values outside"):
        scorer(edits, inputs * 255, styles)
    assert scorer(edits[:1, :1], inputs[:1], styles[:1])["brightness"].shape == (1, 1)


def feedback_models(scorer) -> dict[str, torch.nn.Module]:
    """The torch models inside the scorer's loaded feedback objects, by role."""
    models = {}
    for (role, _), value in scorer.models.loaded.items():
        if role == "masks":
            models["detector"], models["segmenter"] = value.detector, value.segmenter
        else:
            models[role] = value.model
    return models


class CallRecorder:
    """Records (batch size, dtype) of the pixels every feedback model receives."""

    def __init__(self):
        self.calls: dict[str, list[tuple[int, torch.dtype]]] = {}
        self.handles = []

    def record(self, role, pixels):
        self.calls.setdefault(role, []).append((pixels.shape[0], pixels.dtype))

    def attach(self, models, monkeypatch):
        for role, model in models.items():
            if role == "semantic":  # DreamSim is called through ``model.embed(pixels)``
                def recording_embed(pixels, role=role, embed=model.embed):
                    self.record(role, pixels)
                    return embed(pixels)

                monkeypatch.setattr(model, "embed", recording_embed)
            else:
                def hook(module, args, kwargs, role=role):
                    self.record(role, kwargs["pixel_values"] if "pixel_values" in kwargs else args[0])

                # SAM2 encodes the images once (its vision encoder), then decodes the boxes in chunks
                encoder = model.vision_encoder if role == "segmenter" else model
                self.handles.append(encoder.register_forward_pre_hook(hook, with_kwargs=True))

    def detach(self):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("batch_size", [1, 4])
def test_reward_batch_size_bounds_every_feedback_model_call(folders, monkeypatch, batch_size):
    """Each feedback model sees at most ``reward.batch_size`` images per call, in exactly
    ceil(count / batch_size) calls per image set (B inputs, B·G edits, B styles)."""
    scorer = build_scorer(feedback_config(folders, batch_size=batch_size, box_threshold=0.8), "cpu")
    recorder = CallRecorder()
    recorder.attach(feedback_models(scorer), monkeypatch)
    try:
        scorer(*make_images(6))
    finally:
        recorder.detach()
    calls = {role: [size for size, _ in sizes] for role, sizes in recorder.calls.items()}
    assert set(calls) == {"depth", "semantic", "detector", "segmenter"}
    chunks = lambda count: -(-count // batch_size)  # noqa: E731
    assert len(calls["depth"]) == chunks(B) + chunks(B * G)  # inputs, then edits
    assert len(calls["semantic"]) == chunks(B * G) + chunks(B)  # edits, then styles
    assert len(calls["detector"]) == 2 * chunks(B)  # input images and style images
    assert 1 <= len(calls["segmenter"]) <= 2 * chunks(B)  # only chunks where a box was found
    for role, sizes in calls.items():
        assert max(sizes) <= batch_size, role
    assert sum(calls["depth"]) == B + B * G and sum(calls["semantic"]) == B * G + B
    assert sum(calls["detector"]) == 2 * B


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_reward_dtype_loads_and_runs_the_feedback_models_in_that_dtype(folders, monkeypatch, name, dtype):
    scorer = build_scorer(feedback_config(folders, dtype=name, box_threshold=0.8), "cpu")
    models = feedback_models(scorer)
    assert set(models) == {"depth", "semantic", "detector", "segmenter"}
    for role, model in models.items():
        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        assert tensors and {t.dtype for t in tensors} == {dtype}, role
    recorder = CallRecorder()
    recorder.attach(models, monkeypatch)
    try:
        scores = scorer(*make_images(7))
    finally:
        recorder.detach()
    for role, sizes in recorder.calls.items():
        assert {d for _, d in sizes} == {dtype}, role  # pixels are fed in the model's dtype
    assert all(value.dtype == torch.float32 and torch.isfinite(value).all() for value in scores.values())


def parameter_devices(model) -> set[str]:
    return {param.device.type for value in vars(model).values() if isinstance(value, torch.nn.Module)
            for param in value.parameters()}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="moving the feedback models needs a GPU to move them to"))])
def test_offloaded_feedback_models_live_on_the_cpu_and_score_on_the_device(folders, device):
    resident = build_scorer(feedback_config(folders), device)
    offloaded = build_scorer(feedback_config(folders, offload=True), device)
    models = offloaded.feedback_models
    assert {type(m).__name__ for m in models} == {"DepthEstimator", "DreamSimPatches", "MaskPredictor"}
    assert all(parameter_devices(m) == {"cpu"} and m.device.type == "cpu" for m in models)
    edits, inputs, styles = make_images()
    with offloaded.models_on_device():
        assert all(parameter_devices(m) == {device} for m in models)
        scores = offloaded(edits, inputs, styles)
    assert all(parameter_devices(m) == {"cpu"} for m in models), "back on the CPU after scoring"
    expected = resident(edits, inputs, styles)
    for name, value in expected.items():
        assert torch.allclose(scores[name], value, atol=1e-5), name


def test_feedback_models_load_frozen(folders):
    """No feedback weight takes gradients: the scorer's models (and so the model check's
    estimate, which counts weights without gradients as frozen) are frozen."""
    config = feedback_config(folders)
    config.reward.weights = {"semantic": 1.0, "structural": 1.0}
    scorer = build_scorer(config, "cpu")
    modules = [value for model in scorer.feedback_models for value in vars(model).values()
               if isinstance(value, torch.nn.Module)]
    assert len(modules) >= 4  # depth, patch embedder, detector, segmenter
    assert not any(p.requires_grad for module in modules for p in module.parameters())
