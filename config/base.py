"""Default training/generation configuration (the paper's method on the real models).

Override any key on the command line: ``--config.sample.num_steps=50``. Presets of other files
are chosen with ``--config path.py:name``.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()

    # ---- run ----
    config.run_name = ""  # empty: a timestamp; the run folder is <logdir>/<run_name>
    config.seed = 42
    config.logdir = "logs"
    config.num_epochs = 20
    config.save_freq = 1  # epochs between checkpoints
    config.num_checkpoint_limit = 5  # newest checkpoints kept; 0 keeps all
    config.mixed_precision = "bf16"  # "no", "fp16" or "bf16"
    config.allow_tf32 = True
    config.load_checkpoint = ""  # a checkpoint folder or a run folder (newest checkpoint) to resume
    config.use_lora = True
    config.lora_rank = 8
    config.lora_alpha = 8
    config.wandb_project = ""  # empty: no wandb; offline automatically without credentials
    config.gradient_checkpointing = False  # recommended with use_lora=False
    config.demo_root = ""  # set by config/demo.py: scripts build the demo assets there first
    config.overwrite = False  # generate.py: redo edits that already exist (else they are skipped)

    # ---- data ----
    config.inputimg_dir = "data/inputs"  # photos containing the object to edit
    config.styleimg_dir = "data/styles"  # ~5 reference photos of the target concept
    config.input_name = "car"  # what to edit, passed to the detector as is ("red sports car" works)
    config.style_name = "lego"  # the target concept
    config.whole_frame = False  # global edits: masks are the whole image
    config.data_resize = 256  # short side resized, then centre-cropped to a square

    # ---- base model ----
    config.pretrained = pretrained = ml_collections.ConfigDict()
    pretrained.model = "timbrooks/instruct-pix2pix"
    pretrained.revision = ""  # empty: the hub default
    pretrained.scheduler = "euler_ancestral"  # or "ddim"

    # ---- sampling ----
    config.sample = sample = ml_collections.ConfigDict()
    sample.num_steps = 100
    sample.eta = 1.0  # DDIM only; must be > 0 for log-probabilities
    sample.guidance_scale = 7.5  # text
    sample.image_guidance_scale = 1.5
    sample.style_image_guidance_scale = 3.0
    sample.batch_size = 4  # inputs per process per sampling batch
    sample.num_batches_per_epoch = 2
    sample.nb_gen = 2  # edits per input, ranked against each other
    sample.sample_savedir = "outputs/edits"  # generate.py writes here

    # ---- training ----
    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 1  # inputs (each with its nb_gen edits) per micro-step
    train.use_8bit_adam = False
    train.learning_rate = 3e-5
    train.adam_beta1 = 0.9
    train.adam_beta2 = 0.999
    train.adam_weight_decay = 1e-4
    train.adam_epsilon = 1e-8
    train.gradient_accumulation_steps = 8
    train.max_grad_norm = 1.0
    train.num_inner_epochs = 1
    train.timestep_fraction = 1.0  # share of each trajectory's trainable steps used for training
    train.eps = 0.1  # clip band of the ratio: [1 - eps, 1 + eps]
    train.beta = 0.1  # temperature of the preference loss
    train.score_alpha = ml_collections.FieldReference(1.0)  # weight of the semantic score
    train.rec_lambda = ml_collections.FieldReference(0.5)  # weight of reconstruction in semantic

    # ---- AI feedback ----
    config.reward = reward = ml_collections.ConfigDict()
    # Scores combined into the ranking: name -> weight. Each score is standardised over the epoch
    # batch, signed by its direction (see editspecialists.rewards.registry) and weighted.
    reward.weights = ml_collections.ConfigDict(
        {"structural": 1.0, "semantic": train.get_ref("score_alpha")}
    )
    reward.rec_lambda = train.get_ref("rec_lambda")  # rec_lambda > 0 with whole_frame penalises
    # any change of the image (its "outside" is empty, so the whole image is used): consider 0.
    reward.box_threshold = 0.4
    reward.text_threshold = 0.3
    reward.structural_align = "none"  # or "scale_shift": least-squares align the edit's depth first
    reward.semantic_backbone = "dreamsim"  # or "dinov2" / "clip": transformers patch embedder
    reward.batch_size = 8  # images per feedback-model call
    reward.dtype = "fp32"  # "fp32", "fp16" or "bf16" for the frozen feedback models
    reward.overlap = True  # on CUDA, score batch k while batch k+1 samples (no effect on CPU)

    # ---- model ids (hub ids or local folders) ----
    config.models = models_config()
    return config


def models_config():
    """Feedback and evaluation model ids (SPEC §9); each may be a hub id or a local folder."""
    models = ml_collections.ConfigDict()
    models.detector = "IDEA-Research/grounding-dino-tiny"
    models.segmenter = "facebook/sam2.1-hiera-large"
    # CC-BY-NC-4.0; "depth-anything/Depth-Anything-V2-Small-hf" is Apache-2.0.
    models.depth = "depth-anything/Depth-Anything-V2-Large-hf"
    models.dreamsim = "dinov2_vitb14"  # DreamSim variant; weights cached in models.dreamsim_cache
    models.dreamsim_cache = "~/.cache/dreamsim"
    models.semantic_dinov2 = "facebook/dinov2-base"  # used when reward.semantic_backbone="dinov2"
    models.clip = "openai/clip-vit-large-patch14"
    models.dino = "facebook/dinov2-large"
    models.hps_architecture = "ViT-H-14"
    models.hps_checkpoint = "xswu/HPSv2:HPS_v2.1_compressed.pt"
    models.pickscore = "yuvalkirstain/PickScore_v1"
    models.pickscore_processor = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    models.imagereward = "THUDM/ImageReward"
    models.imagereward_tokenizer = "google-bert/bert-base-uncased"
    return models
