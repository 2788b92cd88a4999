"""Default training/generation configuration (the paper's method on the real models).

Override any key on the command line: ``--config.sample.num_steps=50``. Presets of other files
are chosen with ``--config path.py:name``.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    # ---- run ----
    config.run_name = ""  # empty: a timestamp; the run folder is <logdir>/<run_name>
    config.seed = 0  # seeds data order, sampling noise, timestep choice and LoRA init
    config.logdir = "logs"  # parent folder of the run folders
    config.num_epochs = 20  # sample -> score -> train rounds
    config.save_freq = 1  # epochs between checkpoints
    config.num_checkpoint_limit = 0  # newest checkpoints kept; 0 keeps all
    # "no" (fp32, the original), "fp16" or "bf16": faster, changes the log-ratios (README, Differences)
    config.mixed_precision = "no"
    config.allow_tf32 = True  # TF32 matmuls on Ampere+ GPUs (no effect on CPU)
    config.load_checkpoint = ""  # a checkpoint folder or a run folder (newest checkpoint) to resume
    config.use_lora = True  # LoRA on the UNet attention (False: full fine-tuning, a reference UNet copy)
    config.lora_rank = 8  # LoRA rank r
    config.lora_alpha = 8  # LoRA scaling alpha (the update is scaled by alpha / r)
    # xformers' memory-efficient attention in the UNet and VAE (training and generate.py; needs
    # pip install xformers), the original's key; PyTorch's own attention is memory-efficient too.
    config.use_xformers = False
    # "default": peft's (A Kaiming-uniform, B zero); "gaussian": A ~ N(0, std 1/lora_rank), several
    # times larger updates at the same learning rate
    config.lora_init = "default"
    # Comma-separated names of the modules LoRA adapts; "" = the family's (InstructPix2Pix:
    # to_q,to_k,to_v,to_out.0; Kontext: those and the text stream's add_q/k/v_proj,to_add_out)
    config.lora_targets = ""
    # wandb project of the run, as the original (which always logged to "EditSpecialists"); empty:
    # no wandb. Not installed or not logged in: metrics.jsonl only, with one line saying so (never a
    # prompt); WANDB_MODE=offline/disabled is obeyed.
    config.wandb_project = "EditSpecialists"
    # "without_lora" (on for full fine-tuning only), "always" or "never"
    config.gradient_checkpointing = "without_lora"
    # Reproduces the paper's code, defects included: its sampler scaled Euler-ancestral step i's
    # model input with step i-1's sigma, and its training forward's style cross-attention attended
    # from the noisy latent instead of the input image's latent, so training recomputed other
    # log-probabilities than sampling recorded. For checking against the paper or continuing its
    # runs; also applies to generate.py's sampler.
    config.research_code_compat = False
    config.demo_root = ""  # set by config/demo.py: scripts build the demo assets there first
    config.overwrite = False  # generate.py: redo edits that already exist (else they are skipped)

    # ---- data ----
    config.inputimg_dir = "data/inputs"  # photos containing the object to edit
    config.styleimg_dir = "data/styles"  # ~5 reference photos of the target concept
    config.input_name = "car"  # what to edit, passed to the detector as is ("red sports car" works)
    config.style_name = "lego"  # the target concept
    config.whole_frame = False  # global edits: masks are the whole image
    config.data_resize = 256  # short side resized, then centre-cropped to a square
    # Filter of that resize (training and generate.py): "bilinear" is torchvision's Resize +
    # CenterCrop as the original used them; "bicubic" (Pillow's) was ours before.
    config.resize_filter = "bilinear"

    # ---- base model ----
    config.pretrained = pretrained = ml_collections.ConfigDict()
    pretrained.model = "timbrooks/instruct-pix2pix"  # InstructPix2Pix hub id or local folder
    pretrained.revision = "main"  # hub branch, tag or commit of pretrained.model
    pretrained.scheduler = "euler_ancestral"  # or "ddim"; "flow_sde" for the flux_kontext family
    # The editor: "instruct_pix2pix" (the paper's) or "flux_kontext" (FLUX.1 Kontext, ours:
    # docs/method.md §13, config/kontext.py)
    pretrained.family = "instruct_pix2pix"
    pretrained.max_sequence_length = 512  # flux_kontext: T5 tokens per prompt (its pipeline's default)

    # ---- sampling ----
    config.sample = sample = ml_collections.ConfigDict()
    sample.num_steps = 100  # denoising steps per edit
    sample.eta = 1.0  # DDIM's eta (> 0 for log-probabilities); the flow SDE's noise level a
    # "start:stop": only steps start..stop-1 stochastic (and trained), the rest deterministic (DDIM
    # eta 0, flow ODE steps; as MixGRPO / Flow-GRPO-Fast); "" = every step (the original)
    sample.sde_window = ""
    sample.guidance_scale = 7.5  # text
    sample.image_guidance_scale = 1.5  # input image
    sample.style_image_guidance_scale = 3.0  # style (visual prompt) image
    sample.batch_size = 4  # inputs per process per sampling batch
    sample.num_batches_per_epoch = 2  # sampling batches per process per epoch
    sample.nb_gen = 2  # edits per input, ranked against each other
    sample.sample_savedir = "generated_samples"  # generate.py writes here (the original's folder)
    # generate.py's instruction: "per_image" draws a template from each image's seed; "first" is
    # always "turn the {input} into {style}"
    sample.generation_prompt = "per_image"
    # generate.py's edit files: "input" is edit_<input file name> in the input's format, as the
    # original (a .jpg input gives a JPEG edit at Pillow's quality 75); "png": edit_<stem>.png, lossless
    sample.edit_format = "input"
    # generate.py on CUDA: the VAE, UNet and style module under fp16 autocast as the original (the
    # sampler's steps stay fp32); False runs fp32. No effect on the CPU.
    sample.generation_autocast = True

    # ---- training ----
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 1  # inputs (each with its nb_gen edits) per micro-step
    train.use_8bit_adam = False  # bitsandbytes 8-bit AdamW (pip install -e '.[8bit]')
    train.learning_rate = 3e-5  # AdamW learning rate
    train.adam_beta1 = 0.9  # AdamW first-moment decay
    train.adam_beta2 = 0.999  # AdamW second-moment decay
    train.adam_weight_decay = 1e-4  # AdamW decoupled weight decay
    train.adam_epsilon = 1e-8  # AdamW denominator epsilon
    train.gradient_accumulation_steps = 8  # micro-batches (x trained timesteps) per optimizer step
    train.max_grad_norm = 1.0  # gradient clipping norm
    train.num_inner_epochs = 1  # training passes over each epoch's samples
    train.timestep_fraction = 1.0  # share of each trajectory's trainable steps used for training
    train.eps = 0.1  # clip band of the ratio: [1 - eps, 1 + eps]
    train.beta = 0.1  # temperature of the preference loss
    # Skip a micro-step on every process when any ratio exp(log p - log p_ref) of it overflows in
    # fp32 (a log-ratio above ~88.72), as the original did; False trains on it (the loss works in
    # log space, so the ratio is clamped to the band's edge). Logged: skipped_fraction per step.
    train.skip_ratio_overflow = True
    train.score_alpha = ml_collections.FieldReference(1.0)  # weight of the semantic score
    train.rec_lambda = ml_collections.FieldReference(0.5)  # weight of reconstruction in semantic

    # ---- AI feedback ----
    config.reward = reward = ml_collections.ConfigDict()
    # Scores combined into the ranking: name -> weight. Each score is standardised (see
    # reward.standardize), signed by its direction (see editspecialists.rewards.registry) and weighted.
    reward.weights = ml_collections.ConfigDict(
        {"structural": 1.0, "semantic": train.get_ref("score_alpha")}
    )
    # With whole_frame, rec_lambda > 0 penalises any change of the image (its "outside" is empty,
    # so the whole image is used): consider 0.
    reward.rec_lambda = train.get_ref("rec_lambda")  # weight of reconstruction (follows train.rec_lambda)
    reward.box_threshold = 0.4  # Grounding DINO box score threshold
    reward.text_threshold = 0.3  # Grounding DINO text score threshold
    reward.structural_align = "none"  # or "scale_shift": least-squares align the edit's depth first
    reward.semantic_backbone = "dreamsim"  # or "dinov2" / "clip": transformers patch embedder
    reward.batch_size = 8  # images per feedback-model call
    reward.dtype = "fp32"  # "fp32", "fp16" or "bf16" for the frozen feedback models
    reward.overlap = True  # on CUDA, score batch k while batch k+1 samples (no effect on CPU)
    # Masks, style tokens and input depth maps computed once per image for the whole run (masks
    # up front, see <run>/masks/), not at every batch; False recomputes them as the original did.
    reward.per_image_constants = True
    # Feedback models kept on the CPU and moved to the GPU only to score each epoch's edits (after
    # sampling, not overlapped with it): less GPU memory, a host-device copy per epoch.
    reward.offload = False
    reward.standardize = "batch"  # scores standardised over each sampling batch, or "epoch", "input"
    # "random" (ours): a control run; each input's edits ranked at random (seeded), the scores
    # still computed and logged: what a run's held-out change is without feedback (updates drift)
    reward.ranking = "scores"
    reward.mask_fallback = "whole_box"  # no detection: SAM on the whole-image box, or "ones"

    # ---- held-out validation (ours; README "Held-out validation") ----
    config.val = val = ml_collections.ConfigDict()
    val.inputimg_dir = ""  # a folder of held-out inputs; empty: split val.fraction off inputimg_dir
    # Share of inputimg_dir held out, never trained on, chosen by file name (stable when files are
    # added); 0 trains on every input (the original) and validates only with val.inputimg_dir.
    val.fraction = 0.1
    val.seeds = 2  # edits per held-out input, each with its own fixed noise seed
    val.every = 2  # epochs between validations (also before the first update and after the last); 0: none
    # "auto": the run's own scores and semantic, structural, reconstruction; or comma-separated names
    val.scores = "auto"

    # ---- model ids (hub ids or local folders) ----
    config.models = models_config()
    return config


def models_config():
    """Feedback and evaluation model ids (docs/method.md §9); each may be a hub id or a local folder."""
    models = ml_collections.ConfigDict()
    models.detector = "IDEA-Research/grounding-dino-tiny"  # open-vocabulary detector (masks)
    models.segmenter = "facebook/sam2-hiera-large"  # SAM 2 (masks from boxes), as the original
    # CC-BY-NC-4.0; "depth-anything/Depth-Anything-V2-Small-hf" is Apache-2.0.
    models.depth = "depth-anything/Depth-Anything-V2-Large-hf"
    models.dreamsim = "dinov2_vitb14"  # DreamSim variant; weights cached in models.dreamsim_cache
    models.dreamsim_cache = "~/.cache/dreamsim"  # DreamSim weights and torch.hub backbone folder
    models.semantic_dinov2 = "facebook/dinov2-base"  # used when reward.semantic_backbone="dinov2"
    models.clip = "openai/clip-vit-large-patch14"  # evaluation CLIP (clip_*, clipSim_*)
    models.dino = "facebook/dinov2-large"  # evaluation DINOv2 (dinoSim_*)
    models.hps_architecture = "ViT-H-14"  # open_clip architecture of HPSv2
    models.hps_checkpoint = "xswu/HPSv2:HPS_v2.1_compressed.pt"  # <repo>:<file> or a local file
    models.pickscore = "yuvalkirstain/PickScore_v1"  # pick_score model
    models.pickscore_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore's processor
    models.imagereward = "THUDM/ImageReward"  # ImageReward.pt + med_config.json
    models.imagereward_tokenizer = "google-bert/bert-base-uncased"  # ImageReward's BERT tokenizer
    return models
