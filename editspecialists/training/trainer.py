"""The online RLAIF loop: sample edits -> score -> rank -> clipped preference update (docs/method.md §5).

One :class:`Trainer` per process; everything that crosses processes goes through accelerate.
Every random draw is a function of (seed, epoch, process), so a resumed run repeats exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from editspecialists import writing
from editspecialists.stopping import StopOnSignal, Stopped, signal_name
from editspecialists.training.config_rules import validate_training_config
from editspecialists.data.dataset import EditBatch, EditDataset
from editspecialists.data.held_out import held_out_inputs
from editspecialists.diffusion.guidance import EditConditioning, GuidanceScales
from editspecialists.diffusion.logprob import step_is_stochastic
from editspecialists.diffusion.bundle import EditModelSpec, build_edit_model, load_schedule
from editspecialists.diffusion.sampler import Trajectories, sample_edits, sampling_eta, transition_log_probs
from editspecialists.model_ids import explain_loading, model_ids_of, validate_model_ids
from editspecialists.rewards.constants import image_keys
from editspecialists.rewards.registry import feedback_model_keys, validation_score_names
from editspecialists.formats import checkpoint as ckpt
from editspecialists.training import resume
from editspecialists.training import run_folder
from editspecialists.training.gather import full_tensors, gather_list, gather_object
from editspecialists.launch import console_line, end_process_group, process_state
from editspecialists.training.mask_preview import MaskRecord, detection_summary, write_mask_preview
from editspecialists.training.overlap import BackgroundScoring
from editspecialists.training.ranking import (RatioStats, micro_step_is_usable, preference_loss, random_costs,
                                              rank_edits, ranking_costs)
from editspecialists.training.tracking import RunLogger, edit_grid, epoch_summary
from editspecialists.training.within_epoch import EpochSamples, StopTraining, load_samples, save_samples
from editspecialists.training.validation import (HELD_OUT_ROLE, Validation, ValidationSet, describe_validation,
                                                 load_validation_set, validation_cost)

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of a run (docs/method.md §5), per epoch unless stated otherwise."""

    num_processes: int
    images_per_epoch: int  # inputs sampled over all processes (each with nb_gen edits)
    effective_train_batch: int  # inputs per optimizer step over all processes
    optimizer_steps_per_epoch: int
    trained_timesteps: int  # per trajectory
    micro_steps_per_optimizer_step: int  # per process

    def describe(self) -> str:
        """The lines printed at start, each naming the keys it derives from."""
        return "\n".join([
            f"num_processes = {self.num_processes}",
            f"images per epoch (sample.batch_size x processes x sample.num_batches_per_epoch) = "
            f"{self.images_per_epoch}",
            f"effective train batch (train.batch_size x processes x gradient_accumulation_steps) = "
            f"{self.effective_train_batch}",
            f"optimizer steps per epoch (x num_inner_epochs) = {self.optimizer_steps_per_epoch}",
            f"trained timesteps per trajectory = {self.trained_timesteps}",
        ])


def plan_batches(config, num_processes: int, num_trainable_steps: int) -> BatchPlan:
    """Check the batch settings and derive the per-epoch arithmetic; errors name the keys."""
    sample, train = config.sample, config.train
    per_process = sample.batch_size * sample.num_batches_per_epoch
    window = train.batch_size * train.gradient_accumulation_steps
    if per_process % window:
        raise ValueError(
            f"sample.batch_size x sample.num_batches_per_epoch = {per_process} must be a multiple of "
            f"train.batch_size x train.gradient_accumulation_steps = {window}"
        )
    if num_trainable_steps < 1:
        raise ValueError("no trainable denoising step: sample.num_steps must be >= 2 "
                         "(and sample.eta > 0 with the DDIM scheduler)")
    trained = max(1, math.ceil(train.timestep_fraction * num_trainable_steps))
    return BatchPlan(
        num_processes=num_processes,
        images_per_epoch=per_process * num_processes,
        effective_train_batch=window * num_processes,
        optimizer_steps_per_epoch=per_process // window * train.num_inner_epochs,
        trained_timesteps=trained,
        micro_steps_per_optimizer_step=train.gradient_accumulation_steps * trained,
    )


def optimizer_class(use_8bit_adam: bool):
    """AdamW, or bitsandbytes' 8-bit AdamW (checked before any model is loaded)."""
    if not use_8bit_adam:
        return torch.optim.AdamW
    try:
        import bitsandbytes as bnb
    except ImportError as error:
        raise ImportError("train.use_8bit_adam=True needs bitsandbytes: "
                          "pip install 'editspecialists[8bit]'") from error
    return bnb.optim.AdamW8bit


def count_trainable_steps(config) -> int:
    """Stochastic (trainable) steps of the configured schedule, from the scheduler config alone."""
    scheduler = load_schedule(EditModelSpec.from_config(config), config.sample.num_steps, config.data_resize)
    return int(step_is_stochastic(scheduler, eta=sampling_eta(config.sample)).sum())


def derived_generator(seed: int, *keys: int, device="cpu") -> torch.Generator:
    """A torch generator seeded from (seed, *keys), independent across distinct keys."""
    state = int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])
    return torch.Generator(device).manual_seed(state)


# Purposes of derived generators, so that no two draws share a stream.
DATA, SAMPLING, TIMESTEPS, RANKING = 0, 1, 2, 3


class Trainer:
    """Checks a config (construction), builds everything from it (:meth:`load`) and runs the
    epochs (:meth:`run`).

    ``dataset`` replaces the image folders of the config: any object with the
    ``epoch_batches`` method of :class:`~editspecialists.data.dataset.EditDataset`.
    """

    def __init__(self, config, dataset=None):
        """Check the config, the model ids (not the models), the images and the batch arithmetic;
        nothing loads here (:meth:`load` does, and :meth:`run` calls it)."""
        # A resumed run goes on with its own settings, checked before any model loads.
        self.checkpoint = (ckpt.resolve_checkpoint(config.load_checkpoint, with_state=True)
                           if config.load_checkpoint else None)
        if self.checkpoint:
            config = resume.resumed_config(config, self.checkpoint)
        validate_training_config(config)
        self.config = config
        self.eta = sampling_eta(config.sample)  # the noise scale of every step (sde_window)
        self.optimizer_class = optimizer_class(config.train.use_8bit_adam)
        held_out, self.no_validation_reason = self._held_out(dataset)
        self.score_names = list(config.reward.weights.keys())
        self.validation_scores = validation_score_names(config) if held_out else []
        self.feedback_ids = model_ids_of(config, feedback_model_keys(config, self.scored_names))
        validate_model_ids({"pretrained.model": config.pretrained.model, **self.feedback_ids},
                           {"pretrained.model": config.pretrained.revision})
        if dataset is None:
            dataset = EditDataset(config.inputimg_dir, config.styleimg_dir, config.input_name,
                                  config.style_name, config.data_resize,
                                  exclude=held_out.excluded_from_training if held_out else (),
                                  resize_filter=config.resize_filter)
        self.dataset = dataset
        self.validation_set = self._load_validation_set(held_out)
        self.plan = plan_batches(config, process_state().num_processes, count_trainable_steps(config))
        self.loaded = False

    def load(self) -> "Trainer":
        """Everything a run needs, once: the accelerator, the run folder, the edit model and its
        optimizer, the feedback models, the resumed checkpoint's state, the held-out validation;
        prints the batch arithmetic. Returns the trainer."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        if self.loaded:
            return self
        config = self.config
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=self.plan.micro_steps_per_optimizer_step,
            project_config=ProjectConfiguration(automatic_checkpoint_naming=False),
        )
        acc = self.accelerator
        set_seed(config.seed)  # LoRA initialisation draws from the global generator
        if config.allow_tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.run_dir = self._make_run_dir()
        self._load_models()
        if self.checkpoint:  # into the whole model, before FSDP (if any) shards it
            ckpt.load_weights(self.policy, self.checkpoint, ckpt.architecture_of(config))
        self.optimizer = self._make_optimizer()
        self.policy, self.optimizer = acc.prepare(self.policy, self.optimizer)
        acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
        acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())
        self.scorer = self._load_scorer()
        self.train_scorer = self.scorer.only(self.score_names)
        self.scoring = BackgroundScoring(self.train_scorer, acc.device,
                                         enabled=config.reward.overlap and not config.reward.offload
                                         and acc.device.type == "cuda")
        self.run_logger = RunLogger(self.run_dir, enabled=acc.is_main_process,
                                    wandb_project=config.wandb_project, config=config.to_dict(),
                                    run_name=self.run_dir.name,
                                    after_failed_write=lambda: run_folder.after_failed_write(self.run_dir))
        self.first_epoch, self.global_step = 0, 0
        self.resumed_samples: EpochSamples | None = None
        self.stop_signal = StopOnSignal("finishing the current optimizer step on every process, then saving "
                                        "a checkpoint")
        if self.checkpoint:
            self.resume(self.checkpoint)
            self._on_main_process(lambda: run_folder.start_run_folder(
                self.run_dir, config.to_json_best_effort(indent=2), self.checkpoint, self.first_epoch))
        self.validation = self._make_validation()
        acc.print(self.plan.describe())
        acc.print(describe_validation(self.validation_set, self.no_validation_reason, config.val.every,
                                      self.validation_cost()))
        self.precompute_masks()
        self.loaded = True
        return self

    # ---------------------------------------------------------------- construction
    @property
    def scored_names(self) -> list[str]:
        """Every score the run computes: its ranking scores, then its validation's."""
        return list(dict.fromkeys([*self.score_names, *self.validation_scores]))

    def _held_out(self, dataset) -> tuple:
        """(:class:`HeldOut` or None, why none) from ``config.val`` (a passed dataset validates only
        on a folder of its own, ``val.inputimg_dir``)."""
        val = self.config.val
        if val.every <= 0:
            return None, "val.every is 0"
        if dataset is not None and not val.inputimg_dir:
            return None, "a dataset was passed to the Trainer: set val.inputimg_dir to validate"
        return held_out_inputs(self.config.inputimg_dir, val.inputimg_dir, val.fraction)

    def _load_validation_set(self, held_out) -> ValidationSet | None:
        config = self.config
        if held_out is None:
            return None
        return load_validation_set(held_out, config.styleimg_dir, config.data_resize, seed=config.seed,
                                   input_name=config.input_name, style_name=config.style_name,
                                   generation_prompt=config.sample.generation_prompt,
                                   seeds_per_input=config.val.seeds, resize_filter=config.resize_filter)

    def _make_validation(self) -> Validation | None:
        from editspecialists.rewards import SCORES

        if self.validation_set is None:
            return None
        directions = {name: SCORES[name].lower_is_better for name in self.validation_scores}
        return Validation(self.validation_set, every=self.config.val.every, num_epochs=self.config.num_epochs,
                          run_dir=self.run_dir, directions=directions, accelerator=self.accelerator,
                          run_logger=self.run_logger)

    def validation_cost(self) -> float:
        """A validation's share of an epoch's denoising work (:func:`validation.validation_cost`)."""
        sample = self.config.sample
        return validation_cost(len(self.validation_set or ()), sample.num_steps, self.plan.images_per_epoch,
                               sample.nb_gen, self.plan.trained_timesteps)

    def _make_run_dir(self) -> Path:
        """The run folder, chosen and created by the main process (:mod:`run_folder`). A new run's
        config is written now; a resumed run's records once its checkpoint has loaded."""
        def make() -> str:
            run_dir = run_folder.choose_run_dir(self.config, self.checkpoint)
            if self.checkpoint:
                run_dir.mkdir(parents=True, exist_ok=True)
            else:
                run_folder.start_run_folder(run_dir, self.config.to_json_best_effort(indent=2), None, 0)
            return str(run_dir)

        return Path(self._on_main_process(make))

    def _on_main_process(self, work):
        """``work()`` on the main process, its result given to every process; its ValueError or
        OSError (a folder that holds another run, a failed write) raised on every process."""
        from accelerate.utils import broadcast_object_list

        outcome = [None]
        if self.accelerator.is_main_process:
            try:
                outcome = [("ok", work())]
            except (ValueError, OSError) as error:
                outcome = [("error", error)]
        broadcast_object_list(outcome)
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value

    def _load_models(self) -> None:
        """The edit model of the config (:func:`build_edit_model`), its sampling timesteps set."""
        config, acc = self.config, self.accelerator
        with acc.main_process_first():
            self.model = build_edit_model(EditModelSpec.from_config(config), acc.device)
        self.model.set_timesteps(config.sample.num_steps, config.data_resize)
        self.trainable_steps = step_is_stochastic(self.model.scheduler, eta=self.eta)
        self.policy = self.model.policy

    def _make_optimizer(self):
        train = self.config.train
        return self.optimizer_class(self.policy.trainable_parameters(), lr=train.learning_rate,
                                    betas=(train.adam_beta1, train.adam_beta2),
                                    weight_decay=train.adam_weight_decay, eps=train.adam_epsilon)

    def _load_scorer(self):
        from editspecialists.rewards import build_scorer

        with explain_loading(self.feedback_ids):
            return build_scorer(self.config, self.accelerator.device, self.accelerator, names=self.scored_names)

    @property
    def unwrapped_policy(self):
        return self.accelerator.unwrap_model(self.policy)

    # ---------------------------------------------------------------- epoch loop
    def run(self) -> Path:
        """Run epochs ``first_epoch .. num_epochs - 1``; returns the run folder.

        SIGTERM or SIGINT stops the run at the next safe point of every process (after the current
        optimizer step, or before the next sampling batch) with a checkpoint: :meth:`stop_and_save`.
        """
        self.load()
        config = self.config
        epochs = range(self.first_epoch, config.num_epochs)
        start = time.monotonic()
        samples = None
        with self.stop_signal:
            try:
                self.validate(self.first_epoch)
                for done, epoch in enumerate(tqdm(epochs, desc="epoch",
                                                  disable=not self.accelerator.is_local_main_process), 1):
                    samples, self.resumed_samples = self.resumed_samples or self.epoch_samples(epoch), None
                    for inner in range(samples.inner, config.train.num_inner_epochs):
                        self.train_epoch(epoch, inner, samples.trajectories, samples.order, samples.has_preference,
                                         first=samples.start if inner == samples.inner else 0)
                    if (epoch + 1) % config.save_freq == 0 or epoch + 1 == config.num_epochs:
                        self.save_checkpoint(epoch + 1)
                    self.print_epoch_summary(epoch, time.monotonic() - start, done, len(epochs))
                    self.validate(epoch + 1)
            except StopTraining as stop:
                self.stop_and_save(stop, samples)
        self.check_replicas_in_sync()
        self.scoring.close()
        self.run_logger.close()
        end_process_group()
        return self.run_dir

    def validate(self, after_epochs: int) -> None:
        """The held-out validation after ``after_epochs`` epochs, when one is due and not done yet
        (:class:`~editspecialists.training.validation.Validation`)."""
        if self.validation is None or not self.validation.due(after_epochs):
            return
        sample = self.config.sample
        with self.scorer.models_on_device():
            self.validation.run(after_epochs, self.validation_edits, self.validation_scorer,
                                batch_size=sample.batch_size * sample.nb_gen)

    @property
    def validation_scorer(self):
        return self.scorer.only(self.validation_scores)

    @torch.no_grad()
    def validation_edits(self, items: list[dict], inputs, styles, reference: bool):
        """One edit ``(n, 3, S, S)`` per validation item (its prompt and noise seed), by the policy
        or, with ``reference``, by the frozen base model."""
        batch = EditBatch(inputs, styles, [item["prompt"] for item in items], [item["input"] for item in items],
                          [item["style"] for item in items])
        device = self.accelerator.device
        generators = [torch.Generator(device).manual_seed(item["seed"]) for item in items]
        policy = self.unwrapped_policy
        policy.eval()
        with policy.reference() if reference else contextlib.nullcontext():
            trajectories = sample_edits(policy, self.model.scheduler, self.model.vae, self.conditioning(batch), nb_gen=1,
                                        scales=self.model.scales, eta=self.eta, generator=generators,
                                        autocast=self.accelerator.autocast,
                                        research_code_compat=self.config.research_code_compat)
        return trajectories.images[:, 0]

    def epoch_samples(self, epoch: int) -> EpochSamples:
        """The epoch's edits of this process: sampled, scored, ranked (over every process) and logged."""
        trajectories, batches, scores = self.sample_epoch(epoch)
        order, has_preference = self.rank_and_log(epoch, scores, [len(batch.prompts) for batch in batches])
        self.log_grid(epoch, trajectories, batches, scores, order)
        return EpochSamples(trajectories, order, has_preference)

    def stop_and_save(self, stop: StopTraining, samples: EpochSamples | None):
        """Save the checkpoint a stopped run resumes from, then raise :class:`Stopped` saying where
        and how to resume (the message on the main process only).

        Stopped before sampling an epoch: ``checkpoint_<epoch>`` (saved now unless it exists).
        Stopped within an epoch: ``checkpoint_<epoch>_step_<global_step>`` with the epoch's samples
        and the place to go on from, so that the resumed run equals an uninterrupted one.
        """
        acc = self.accelerator
        if stop.inner is None:
            checkpoint = self.run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(stop.epoch)
            if checkpoint not in ckpt.list_checkpoints(self.run_dir):
                self.save_checkpoint(stop.epoch)
            where = f"before epoch {stop.epoch}"
        else:
            checkpoint = self.save_checkpoint(stop.epoch, EpochSamples(samples.trajectories, samples.order,
                                                                       samples.has_preference, stop.inner, stop.start))
            where = f"in epoch {stop.epoch} after optimizer step {self.global_step}"
        self.scoring.close()
        self.run_logger.close()
        signum = self.stop_signal.signum
        message = (f"stopped by {signal_name(signum)} {where}; saved {checkpoint}. Resume with: "
                   f"{run_folder.continue_command(self.run_dir)}") if acc.is_main_process else ""
        raise Stopped(message, signum)

    def print_epoch_summary(self, epoch: int, elapsed_s: float, done: int, total: int) -> None:
        """The epoch's console line (main process; see :func:`tracking.epoch_summary`), remaining
        time extrapolated from the epochs of this launch."""
        if self.accelerator.is_main_process:
            remaining = elapsed_s / done * (total - done)
            console_line(epoch_summary(epoch, self.config.num_epochs, self.run_logger.records, elapsed_s, remaining))

    def check_replicas_in_sync(self) -> None:
        """Compare weight fingerprints across processes; a difference means a sync bug."""
        acc = self.accelerator
        params = list(full_tensors(dict(enumerate(self.unwrapped_policy.trainable_parameters()))).values())
        fingerprint = torch.stack([p.detach().double().sum() for p in params]
                                  + [p.detach().double().abs().sum() for p in params])
        everyone = acc.gather(fingerprint.unsqueeze(0))
        if not (everyone == everyone[0]).all():
            raise RuntimeError("trainable weights differ between processes: gradient sync is broken")
        acc.print(f"trainable weights identical on all {acc.num_processes} processes")

    def sample_epoch(self, epoch: int):
        """Sample this process's edits of the epoch and score them.

        Returns the concatenated :class:`Trajectories` (B_local inputs), the data batches and
        ``{score: (B_local, G)}``.
        """
        acc, sample = self.accelerator, self.config.sample
        batches = self.dataset.epoch_batches(sample.batch_size, sample.num_batches_per_epoch,
                                             derived_generator(self.config.seed, DATA, epoch),
                                             acc.process_index, acc.num_processes)
        generator = derived_generator(self.config.seed, SAMPLING, epoch, acc.process_index, device=acc.device)
        policy = self.unwrapped_policy
        policy.eval()
        parts, deferred = [], []
        for batch in tqdm(batches, desc="sampling", leave=False, disable=not acc.is_local_main_process):
            if self.stop_signal.requested(acc):
                raise StopTraining(epoch)
            trajectories = sample_edits(policy, self.model.scheduler, self.model.vae, self.conditioning(batch),
                                        nb_gen=sample.nb_gen, scales=self.model.scales, eta=self.eta,
                                        generator=generator, autocast=acc.autocast,
                                        research_code_compat=self.config.research_code_compat)
            parts.append(trajectories)
            deferred.append((trajectories.images, batch.inputs.to(acc.device), batch.styles.to(acc.device),
                             image_keys("input", batch.input_files, batch.inputs),
                             image_keys("style", batch.style_files, batch.styles)))
            if not self.scorer.offload:  # scored while the next batch samples (reward.overlap)
                self.scoring.submit(*deferred.pop())
        with self.scorer.models_on_device():
            for args in deferred:
                self.scoring.submit(*args)
            scores = self.scoring.results()
        merged = {name: torch.cat([s[name] for s in scores]) for name in scores[0]}
        return Trajectories.cat(parts), batches, merged

    def conditioning(self, batch) -> EditConditioning:
        """VAE latents of the batch's inputs and styles and its prompt embeddings, in fp32."""
        return self.model.conditioning(batch.inputs, batch.styles, batch.prompts)

    def precompute_masks(self) -> None:
        """Masks of every input and style image of the dataset, before the first epoch, kept as
        per-image constants (``reward.per_image_constants`` with predicted masks and an
        :class:`EditDataset`; otherwise masks are computed when first scored).

        Each process computes a share of the images, one image per call (so that a mask does not
        depend on how images are grouped, nor on the number of processes), and every process
        gets all of them. The main process writes ``<run>/masks/`` and prints how many images
        have no detection.
        """
        scorer, dataset, acc = self.scorer, self.dataset, self.accelerator
        if not (scorer.predicts_masks and scorer.constants is not None and isinstance(dataset, EditDataset)):
            return
        roles = [("input", dataset.inputs, [path.name for path in dataset.input_files], self.config.input_name),
                 ("style", dataset.styles, [path.name for path in dataset.style_files], self.config.style_name)]
        if self.validation_set is not None:
            roles.append((HELD_OUT_ROLE, *reversed(self.validation_set.distinct_inputs()), self.config.input_name))
        records, images, masks = [], [], []
        with scorer.models_on_device():
            for role, role_images, names, name in roles:
                role_masks, role_records = self.masks_of(role, role_images, names, name)
                records += role_records
                images += list(role_images)
                masks += list(role_masks.cpu())
        if acc.is_main_process:
            folder = self.run_logger.write(self.run_dir, lambda run: write_mask_preview(run, records, images, masks),
                                           sum(3 * image[0].numel() for image in images))
            console_line(detection_summary(records, folder))

    def masks_of(self, role: str, images: torch.Tensor, files: list[str], name: str):
        """Masks ``(N, H, W)`` of ``name`` in ``images`` (N, 3, H, W) of ``role``, this process's
        share computed here and the others' gathered, kept as the images' constants; returns them
        with their :class:`MaskRecord` list."""
        acc, scorer = self.accelerator, self.scorer
        mine = range(acc.process_index, len(files), acc.num_processes)
        local = [(index, detection_of(scorer.mask_fn(images[index:index + 1].to(acc.device), name)))
                 for index in tqdm(mine, desc=f"masks of the {role} images", leave=False,
                                   disable=not acc.is_local_main_process)]
        found = sorted(gather_list(acc, local), key=lambda item: item[0])
        masks = torch.stack([mask for _, (mask, *_) in found]).to(acc.device)
        fallback = torch.tensor([fell_back for _, (_, fell_back, *_) in found], device=acc.device)
        scorer.constants.put(("mask", name), image_keys(role, files, images), (masks, fallback))
        return masks, [MaskRecord(files[index], role, name, boxes, box_scores, fell_back)
                       for index, (_, fell_back, boxes, box_scores) in found]

    def rank_and_log(self, epoch: int, scores: dict[str, torch.Tensor], batch_sizes: list[int]):
        """Rank every process's edits (:func:`rank_gathered`); log the score statistics and the
        epoch's mask fallbacks.

        Returns this process's (order (B_local, G), has_preference (B_local,)).
        """
        acc = self.accelerator
        gathered, order, has_preference = rank_gathered(acc, scores, batch_sizes, self.config.reward,
                                                        derived_generator(self.config.seed, RANKING, epoch))
        num_local = len(next(iter(scores.values())))  # every process samples the same count
        local = slice(acc.process_index * num_local, (acc.process_index + 1) * num_local)
        record = {"epoch": epoch}
        for name, value in gathered.items():
            record[f"{name}_mean"] = value.float().mean()
            record[f"{name}_std"] = value.float().std(unbiased=False)
        record["preference_fraction"] = has_preference.float().mean()
        record.update(self.mask_fallback_stats(epoch))
        self.run_logger.log(record)
        return order[local], has_preference[local]

    def mask_fallback_stats(self, epoch: int) -> dict:
        """``mask_fallback_fraction``: the fraction of the epoch's input and style images (all
        processes) in which the detector found nothing; warns above one half. Empty when no
        detector runs (whole_frame, or no score reads masks)."""
        if not self.train_scorer.predicts_masks:
            return {}
        acc, roles = self.accelerator, {}
        for key in ("input_name", "style_name"):
            roles.setdefault(self.config[key], []).append(key)
        fell_back = self.train_scorer.take_mask_fallbacks()
        counts = torch.tensor([[int(fell_back[n].sum()), len(fell_back[n])] if n in fell_back else [0, 0]
                               for n in roles], device=acc.device)
        counts = acc.reduce(counts, reduction="sum").cpu()
        missed_total, masked_total = counts.sum(dim=0).tolist()
        if not masked_total:
            return {}
        for (name, keys), (missed, masked) in zip(roles.items(), counts.tolist()):
            if acc.is_main_process and masked and missed / masked > 0.5:
                logger.warning("epoch %d: the detector found no %s %r in %d of %d images: the name does not match "
                               "what the images show, and the semantic reward measures the whole frame there",
                               epoch, " / ".join(keys), name, missed, masked)
        return {"mask_fallback_fraction": missed_total / masked_total}

    def log_grid(self, epoch, trajectories, batches, scores, order) -> None:
        """Log the first batch's inputs, styles and edits with their scores and ranks."""
        if not self.accelerator.is_main_process:
            return
        first = batches[0]
        count = len(first.prompts)
        rank_of = order[:count].argsort(dim=1)
        captions = [["\n".join([f"rank {int(rank_of[b, g]) + 1}"] + [
            f"{name} {float(value[b, g]):.3f}" for name, value in scores.items()])
            for g in range(trajectories.images.shape[1])] for b in range(count)]
        grid = edit_grid(first.inputs, first.styles, trajectories.images[:count].cpu(), captions)
        self.run_logger.log_image("edits", grid, epoch)

    def train_epoch(self, epoch: int, inner: int, trajectories: Trajectories, order, has_preference, first: int = 0):
        """One pass of clipped preference updates over this process's trajectories, from the
        ``first`` input of its shuffled order (a run resumed within the epoch). Stops after an
        optimizer step when a signal asks to (:class:`StopTraining`)."""
        acc, train = self.accelerator, self.config.train
        generator = derived_generator(self.config.seed, TIMESTEPS, epoch, inner, acc.process_index)
        num_inputs = trajectories.log_probs.shape[0]
        input_order = torch.randperm(num_inputs, generator=generator)
        trainable = self.trainable_steps.nonzero().flatten().cpu()
        step_choice = torch.stack([trainable[torch.randperm(len(trainable), generator=generator)]
                                   for _ in range(num_inputs)])[:, : self.plan.trained_timesteps]
        self.policy.train()
        window = _WindowStats(acc.device)
        starts = range(first, num_inputs, train.batch_size)
        for start in tqdm(starts, desc="training", leave=False, disable=not acc.is_local_main_process):
            index = input_order[start:start + train.batch_size]
            batch = trajectories.select(index.to(trajectories.latents.device))
            for column in range(self.plan.trained_timesteps):
                step_index = step_choice[index, column].to(acc.device)
                self.micro_step(batch, step_index, order[index.to(order.device)],
                                has_preference[index.to(has_preference.device)], window)
                if acc.sync_gradients:
                    self.global_step += 1
                    self.run_logger.log({"epoch": epoch, "step": self.global_step, **window.reduce(acc)})
                    window = _WindowStats(acc.device)
            if acc.sync_gradients and self.stop_signal.requested(acc):
                raise StopTraining(epoch, inner, start + train.batch_size)

    def micro_step(self, batch: Trajectories, step_index, order, has_preference, window) -> None:
        """Forward policy and reference at one timestep per input, loss, backward (accumulated).

        One host sync: whether any process skips the micro-step (:func:`micro_step_is_usable`),
        reduced over processes so that all take the same branch and DDP's all-reduce stays in step."""
        acc, train = self.accelerator, self.config.train
        with acc.accumulate(self.policy):
            loss, stats, usable = micro_batch_loss(
                self.policy, self.model.scheduler, batch, step_index, self.model.empty_embeds, order, has_preference,
                scales=self.model.scales, eta=self.eta, autocast=acc.autocast, eps=train.eps, beta=train.beta,
                skip_ratio_overflow=train.skip_ratio_overflow, research_code_compat=self.config.research_code_compat)
            skip = bool(acc.reduce((~usable).float(), reduction="sum") > 0)
            if skip:
                loss = zero_loss(self.policy)
                window.skipped += 1
            else:
                window.add(loss.detach(), stats)
            acc.backward(loss)
            if acc.sync_gradients and window.updated:
                window.grad_norm = acc.clip_grad_norm_(self.policy.parameters(), train.max_grad_norm)
                self.optimizer.step()
            self.optimizer.zero_grad()

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, next_epoch: int, within: EpochSamples | None = None) -> Path:
        """Write checkpoint_<next_epoch> atomically (weights, trainer state, accelerate state,
        hashes of them all); with ``within`` (a run stopped within epoch ``next_epoch``),
        checkpoint_<next_epoch>_step_<global_step> with each process's samples of the epoch and
        where training goes on in them.

        The disk must have the space the checkpoint needs (:meth:`checkpoint_bytes`) before
        anything is written. A failed write (full disk, any error of the libraries writing) on any
        process removes the partial folder, leaves earlier checkpoints untouched and stops the run on
        every process with a :class:`~editspecialists.writing.WriteFailedError` naming the folder,
        the space needed and the space free, and the command that goes on.
        """
        acc = self.accelerator
        step = self.global_step if within is not None else None
        final = self.run_dir / ckpt.CHECKPOINTS / ckpt.checkpoint_name(next_epoch, step)
        tmp = writing.temporary_path(final)
        needed = self.checkpoint_bytes(within)
        trainer_state = {"epoch": next_epoch, "global_step": self.global_step}
        if within is not None:
            trainer_state["within_epoch"] = {"inner": within.inner, "start": within.start,
                                             "num_processes": acc.num_processes}

        def prepare():
            final.parent.mkdir(parents=True, exist_ok=True)
            writing.check_free_space(final, "checkpoint", needed, "")
            writing.temporary_folder(final)

        def save_state():
            acc.save_state(str(tmp / ckpt.ACCELERATE_STATE))
            if within is not None:
                save_samples(tmp, acc.process_index, within)

        weights = full_tensors(self.unwrapped_policy.trainable_state_dict())

        def write_and_commit():
            ckpt.save_weights(tmp / ckpt.WEIGHTS, weights, ckpt.architecture_of(self.config))
            (tmp / ckpt.TRAINER_STATE).write_text(json.dumps(trainer_state))
            ckpt.record_hashes(tmp)
            writing.commit_folder(tmp, final)
            resume.prune_checkpoints(self.run_dir, self.config.num_checkpoint_limit)

        steps = [(prepare, True), (save_state, False), (write_and_commit, True)]
        for step, main_only in steps:
            failure = attempt(step) if acc.is_main_process or not main_only else ""
            failures = [f for f in gather_object(acc, failure) if f]
            if failures:
                if acc.is_main_process:
                    shutil.rmtree(tmp, ignore_errors=True)
                raise writing.write_failure(final, "checkpoint", failures[0], needed,
                                            run_folder.after_failed_write(self.run_dir))
        return final

    def checkpoint_bytes(self, within: EpochSamples | None = None) -> int:
        """Bytes of the tensors a checkpoint holds: the trainable weights, the optimizer state and,
        ``within`` an epoch, every process's samples (the files add a little to it)."""
        weights = self.unwrapped_policy.trainable_state_dict().values()
        optimizer = [value for state in self.optimizer.state_dict()["state"].values() for value in state.values()
                     if torch.is_tensor(value)]
        samples = within.tensors().values() if within is not None else []
        return (sum(t.numel() * t.element_size() for t in [*weights, *optimizer])
                + self.accelerator.num_processes * sum(t.numel() * t.element_size() for t in samples))

    def resume(self, checkpoint: Path) -> None:
        """Restore optimizer, RNG states and counters from a checkpoint folder (and, for a run stopped
        within an epoch, that epoch's samples and where to go on in them); :meth:`load` has loaded
        its weights."""
        acc = self.accelerator
        state = ckpt.read_trainer_state(checkpoint)
        within = state.get("within_epoch")
        if within and within["num_processes"] != acc.num_processes:
            raise ckpt.CheckpointError(f"{checkpoint} was saved within an epoch by {within['num_processes']} "
                                       f"processes: resume it with {within['num_processes']} processes "
                                       f"(this launch has {acc.num_processes})")
        try:
            acc.load_state(str(checkpoint / ckpt.ACCELERATE_STATE))
        except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError, OSError) as error:
            raise ckpt.CheckpointError(f"{checkpoint / ckpt.ACCELERATE_STATE} cannot be loaded: "
                                       f"{writing.failure_reason(error)}") from error
        self.first_epoch, self.global_step = state["epoch"], state["global_step"]
        if within:
            self.resumed_samples = load_samples(checkpoint, acc.process_index, acc.device, within["inner"],
                                                within["start"])
        where = f"after optimizer step {self.global_step} of epoch" if within else "at epoch"
        acc.print(f"resumed from {checkpoint} {where} {self.first_epoch}")


def attempt(write) -> str:
    """Run ``write()``; "" if it succeeded, else why it failed (:func:`writing.failure_reason` of
    an error of the libraries that write)."""
    try:
        write()
    except writing.WRITE_ERRORS as error:
        return writing.failure_reason(error)
    return ""


def detection_of(masks) -> tuple:
    """(mask (H, W) bool on the CPU, fell back, boxes, box scores) of a one-image :class:`Masks`."""
    return (masks.masks[0].cpu(), bool(masks.fallback[0]), masks.boxes[0].tolist() if masks.boxes else [],
            masks.scores[0].tolist() if masks.scores else [])


def rank_gathered(accelerator, scores: dict[str, torch.Tensor], batch_sizes: list[int], reward,
                  generator: torch.Generator | None = None):
    """Gather scores over processes, standardise each per ``reward.standardize`` group, combine
    them by ``reward.weights`` and rank every input's edits; with ``reward.ranking = "random"``
    rank them by :func:`random_costs` from ``generator`` instead (seeded alike on every process).

    ``scores``: {name: (B_local, G)}, the rows of this process's sampling batches of
    ``batch_sizes`` inputs in order (the same sizes on every process).
    Returns (gathered {name: (N, G)}, order (N, G), has_preference (N,)), rows process-major.
    """
    from editspecialists.rewards import SCORES

    gathered = {name: accelerator.gather(value.contiguous()) for name, value in scores.items()}
    weights = dict(reward.weights)
    combined = ranking_costs(gathered, weights, {n: SCORES[n].lower_is_better for n in weights},
                             reward.standardize, batch_sizes, accelerator.num_processes)
    if reward.ranking == "random":
        combined = random_costs(tuple(combined.shape), generator).to(combined.device)
    return (gathered, *rank_edits(combined))


def micro_batch_loss(policy, scheduler, batch: Trajectories, step_index: torch.Tensor,
                     empty_embeds: torch.Tensor, order: torch.Tensor, has_preference: torch.Tensor, *,
                     scales: GuidanceScales, eta: float, autocast, eps: float, beta: float,
                     skip_ratio_overflow: bool = True, research_code_compat: bool = False):
    """Clipped preference loss of one trained step per input of ``batch`` (b inputs, G edits).

    Policy log-probs (with gradient) and reference log-probs (without) of the transitions at
    ``step_index`` (b,) (:func:`transition_log_probs`, with ``research_code_compat``), then
    :func:`preference_loss` over ``order`` (b, G) best first.
    Returns (loss scalar, :class:`RatioStats`, usable: 0-d bool, :func:`micro_step_is_usable` with
    ``skip_ratio_overflow``).
    """
    kwargs = dict(scales=scales, eta=eta, autocast=autocast, research_code_compat=research_code_compat)
    log_prob = transition_log_probs(policy, scheduler, batch, step_index, empty_embeds, **kwargs)
    reference = transition_log_probs(policy, scheduler, batch, step_index, empty_embeds, reference=True,
                                     **kwargs)
    loss, stats, log_ratio = preference_loss(log_prob, reference, order, has_preference, eps=eps, beta=beta)
    return loss, stats, micro_step_is_usable(loss, log_ratio, skip_ratio_overflow=skip_ratio_overflow)


def zero_loss(policy) -> torch.Tensor:
    """A loss of exactly 0 touching every trainable parameter: skips a micro-step while keeping
    DDP's gradient all-reduce in step on every process."""
    return sum((param * 0).sum() for param in policy.parameters() if param.requires_grad)


class _WindowStats:
    """Per-optimizer-step sums of loss and ratio statistics, kept on the device (read once per
    optimizer step).

    ``skipped`` and ``updated`` count micro-steps on the host: the skip decision is the one host
    sync of a micro-step (:meth:`Trainer.micro_step`: a skipped loss must not reach backward at
    all, as its gradient may be non-finite), agreed by every process, so the counts are equal
    everywhere. A window whose micro-steps were all skipped takes no optimizer step, so momentum
    and weight decay do not move the weights on zero gradients.
    """

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)
        self.ratio = torch.zeros((), device=device)
        self.clipfrac = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.skipped = 0
        self.updated = 0

    def add(self, loss, stats: RatioStats) -> None:
        self.updated += 1
        self.loss += loss
        self.ratio += stats.ratio_mean
        self.clipfrac += stats.clipfrac

    def reduce(self, accelerator) -> dict:
        totals = accelerator.reduce(torch.stack([self.loss, self.ratio, self.clipfrac]), reduction="sum")
        count = max(1, self.updated * accelerator.num_processes)
        return {"loss": totals[0] / count, "ratio_mean": totals[1] / count,
                "clipfrac": totals[2] / count, "grad_norm": torch.as_tensor(self.grad_norm).float(),
                "skipped_micro_steps": self.skipped,
                "skipped_fraction": self.skipped / max(1, self.skipped + self.updated)}
