#!/usr/bin/env bash
# Pre-download every model a config uses, so later runs work with HF_HUB_OFFLINE=1.
#
# The model ids are read from the config (config.pretrained.model and config.models); ids that
# are local folders or files are skipped. Nothing is cloned: every model loads through
# diffusers / transformers / open_clip / dreamsim, and only the files those loaders read are
# fetched (configs, tokenizer files, safetensors weights; no duplicate .bin / .pt weights).
# Usage: bash download_repos.sh [--config config/base.py] [--eval] [--dreamsim-cache DIR]
#   --eval  also fetch the evaluation-only models (CLIP, DINOv2, HPSv2.1, PickScore + its
#           LAION processor, ImageReward + the BERT tokenizer)
# Depth-Anything-V2-Large is CC-BY-NC-4.0; set models.depth to
# depth-anything/Depth-Anything-V2-Small-hf in the config for the Apache-2.0 Small model.
set -euo pipefail

WITH_EVAL=0
CONFIG="$(dirname "$0")/config/base.py"
DREAMSIM_CACHE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --eval) WITH_EVAL=1; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    --dreamsim-cache) DREAMSIM_CACHE="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (use --config FILE, --eval, --dreamsim-cache DIR)" >&2; exit 2 ;;
  esac
done
if [[ ! -f "$CONFIG" ]]; then
  echo "ERROR: config file $CONFIG not found (--config FILE)" >&2
  exit 2
fi

if ! python -c "import huggingface_hub, dreamsim, ml_collections, editspecialists" 2>/dev/null; then
  echo "ERROR: install the project first (pip install -e .): huggingface_hub/dreamsim/ml_collections/editspecialists are missing" >&2
  exit 1
fi

python - "$WITH_EVAL" "$CONFIG" "$DREAMSIM_CACHE" <<'PY'
import importlib.util
import sys
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

with_eval, config_path, dreamsim_cache = sys.argv[1] == "1", sys.argv[2], sys.argv[3]
spec = importlib.util.spec_from_file_location("download_config", config_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config()
models = config.models

WEIGHTS = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer files (vocab/merges), weights
PROCESSOR_ONLY = ["*.json", "*.txt"]


def is_local(model_id: str) -> bool:
    return Path(model_id).expanduser().exists()


try:
    HfApi().model_info(config.pretrained.model if not is_local(config.pretrained.model)
                       else "timbrooks/instruct-pix2pix", timeout=20)
except Exception as error:  # any failure here means the hub cannot be reached
    sys.exit(f"ERROR: cannot reach the Hugging Face hub ({type(error).__name__}: {error}).\n"
             "download_repos.sh needs network access; run it on a machine online, then copy "
             "~/.cache/huggingface (and the DreamSim cache) over, or point the config at local folders.")

repos = [(config.pretrained.model, WEIGHTS, config.pretrained.get("revision") or None),
         (models.detector, WEIGHTS, None), (models.segmenter, WEIGHTS, None), (models.depth, WEIGHTS, None)]
if config.get("reward", {}).get("semantic_backbone") == "dinov2":
    repos.append((models.semantic_dinov2, WEIGHTS, None))
if with_eval:
    repos += [(models.clip, WEIGHTS, None), (models.dino, WEIGHTS, None), (models.pickscore, WEIGHTS, None),
              (models.pickscore_processor, PROCESSOR_ONLY, None), (models.imagereward_tokenizer, PROCESSOR_ONLY, None)]
for repo, patterns, revision in repos:
    if is_local(repo):
        print(f"skipping {repo} (a local folder)", flush=True)
        continue
    print(f"downloading {repo}", flush=True)
    snapshot_download(repo, allow_patterns=patterns, revision=revision)

if with_eval:
    if not is_local(models.hps_checkpoint):
        repo, filename = models.hps_checkpoint.split(":", 1)
        print(f"downloading {repo}/{filename}", flush=True)
        hf_hub_download(repo, filename)
    if not is_local(models.imagereward):
        print(f"downloading {models.imagereward}", flush=True)
        for name in ("ImageReward.pt", "med_config.json"):
            hf_hub_download(models.imagereward, name)

# DreamSim fetches its LoRA zip from GitHub and its backbone through torch.hub, both into the cache
# folder; the loader of training and evaluation reads that folder, offline without any network call.
cache = Path(dreamsim_cache or models.dreamsim_cache).expanduser()
if is_local(models.dreamsim):
    print(f"skipping DreamSim {models.dreamsim} (a local folder)", flush=True)
else:
    print(f"downloading DreamSim ({models.dreamsim}) into {cache}", flush=True)
    from editspecialists.rewards.features import DreamSimPatches

    DreamSimPatches.from_pretrained(models.dreamsim, cache_dir=str(cache))
    if dreamsim_cache:
        print(f"pass --config.models.dreamsim_cache={cache} to the scripts", flush=True)
print("done: set HF_HUB_OFFLINE=1 to run without network")
PY
