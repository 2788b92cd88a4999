#!/usr/bin/env bash
# Pre-download every model a config uses, so later runs work with HF_HUB_OFFLINE=1.
#
# The models are those a training run of the config loads: config.pretrained.model and the
# feedback models of its scores (editspecialists.model_check.download_keys, from the score
# registry: a score the config file registers, by importing its module, brings its own models);
# ids that are local folders or files are skipped. Nothing is cloned: every model loads through
# diffusers / transformers / open_clip / dreamsim, and only the files those loaders read are
# fetched (configs, tokenizer files, safetensors weights; no duplicate .bin / .pt weights).
# Usage: bash download_repos.sh [--config config/base.py] [--eval] [--dreamsim-cache DIR] [--list]
#   --eval  also fetch the evaluation's models (CLIP, DINOv2, HPSv2.1, PickScore + its
#           LAION processor, ImageReward + the BERT tokenizer, DreamSim, depth, masks)
#   --list  print the config keys and ids it would fetch, one a line, and exit (no network)
# Depth-Anything-V2-Large is CC-BY-NC-4.0; set models.depth to
# depth-anything/Depth-Anything-V2-Small-hf in the config for the Apache-2.0 Small model.
set -euo pipefail

WITH_EVAL=0
LIST_ONLY=0
CONFIG="$(dirname "$0")/config/base.py"
DREAMSIM_CACHE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --eval) WITH_EVAL=1; shift ;;
    --list) LIST_ONLY=1; shift ;;
    --config) CONFIG="$2"; shift 2 ;;
    --dreamsim-cache) DREAMSIM_CACHE="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (use --config FILE, --eval, --dreamsim-cache DIR, --list)" >&2; exit 2 ;;
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

python - "$WITH_EVAL" "$CONFIG" "$DREAMSIM_CACHE" "$LIST_ONLY" <<'PY'
import importlib.util
import sys
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

from editspecialists.model_check import download_keys
from editspecialists.model_ids import DREAMSIM, DREAMSIM_CACHE, HUB_FILE, KINDS, OPEN_CLIP, model_ids_of

with_eval, config_path, dreamsim_cache, list_only = sys.argv[1] == "1", sys.argv[2], sys.argv[3], sys.argv[4] == "1"
spec = importlib.util.spec_from_file_location("download_config", config_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # registers the scores of the modules it imports
config = module.get_config()
ids = model_ids_of(config, download_keys(config, with_eval))
if list_only:
    print("\n".join(f"{key} {model_id}" for key, model_id in ids.items()))
    sys.exit(0)

WEIGHTS = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer files (vocab/merges), weights
PROCESSOR_ONLY = ["*.json", "*.txt"]
PATTERNS = {"models.pickscore_processor": PROCESSOR_ONLY, "models.imagereward_tokenizer": PROCESSOR_ONLY}
FILES = {"models.imagereward": ("ImageReward.pt", "med_config.json")}  # the files its loader reads


def is_local(model_id: str) -> bool:
    return Path(model_id).expanduser().exists()


try:
    HfApi().model_info(config.pretrained.model if not is_local(config.pretrained.model)
                       else "timbrooks/instruct-pix2pix", timeout=20)
except Exception as error:  # any failure here means the hub cannot be reached
    sys.exit(f"ERROR: cannot reach the Hugging Face hub ({type(error).__name__}: {error}).\n"
             "download_repos.sh needs network access; run it on a machine online, then copy "
             "~/.cache/huggingface (and the DreamSim cache) over, or point the config at local folders.")


def download_dreamsim(model_id: str) -> None:
    """DreamSim fetches its LoRA zip from GitHub and its backbone through torch.hub, both into the
    cache folder; the loader of training and evaluation reads that folder, offline without any
    network call."""
    from editspecialists.rewards.features import DreamSimPatches

    cache = Path(dreamsim_cache or config.models.dreamsim_cache).expanduser()
    print(f"downloading DreamSim ({model_id}) into {cache}", flush=True)
    DreamSimPatches.from_pretrained(model_id, cache_dir=str(cache))
    if dreamsim_cache:
        print(f"pass --config.models.dreamsim_cache={cache} to the scripts", flush=True)


for key, model_id in ids.items():
    kind = KINDS.get(key)
    if kind in (DREAMSIM_CACHE, OPEN_CLIP):
        continue  # the folder DreamSim fills; an architecture open_clip knows
    if is_local(model_id):
        print(f"skipping {key} {model_id} (a local folder or file)", flush=True)
    elif kind == DREAMSIM:
        download_dreamsim(model_id)
    elif kind == HUB_FILE:
        repo, filename = model_id.split(":", 1)
        print(f"downloading {repo}/{filename}", flush=True)
        hf_hub_download(repo, filename)
    elif key in FILES:
        print(f"downloading {model_id}", flush=True)
        for filename in FILES[key]:
            hf_hub_download(model_id, filename)
    else:
        print(f"downloading {model_id}", flush=True)
        revision = (config.pretrained.get("revision") or None) if key == "pretrained.model" else None
        snapshot_download(model_id, allow_patterns=PATTERNS.get(key, WEIGHTS), revision=revision)
print("done: set HF_HUB_OFFLINE=1 to run without network")
PY
