#!/usr/bin/env bash
# Pre-download every model EditSpecialists uses, so later runs work with HF_HUB_OFFLINE=1.
#
# Nothing is cloned: every model loads through diffusers / transformers / open_clip / dreamsim.
# Usage: bash download_repos.sh [--eval] [--dreamsim-cache DIR]
#   --eval  also fetch the evaluation-only models (CLIP, DINOv2, HPSv2.1, PickScore, ImageReward)
# Depth-Anything-V2-Large is CC-BY-NC-4.0; set DEPTH_MODEL=depth-anything/Depth-Anything-V2-Small-hf
# for the Apache-2.0 Small model.
set -euo pipefail

WITH_EVAL=0
DREAMSIM_CACHE="${HOME}/.cache/dreamsim"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --eval) WITH_EVAL=1; shift ;;
    --dreamsim-cache) DREAMSIM_CACHE="$2"; shift 2 ;;
    *) echo "unknown argument: $1 (use --eval, --dreamsim-cache DIR)" >&2; exit 2 ;;
  esac
done
DEPTH_MODEL="${DEPTH_MODEL:-depth-anything/Depth-Anything-V2-Large-hf}"

if ! python -c "import huggingface_hub, dreamsim" 2>/dev/null; then
  echo "ERROR: install the project first (pip install -e .): huggingface_hub/dreamsim are missing" >&2
  exit 1
fi

python - "$WITH_EVAL" "$DREAMSIM_CACHE" "$DEPTH_MODEL" <<'PY'
import sys

from huggingface_hub import HfApi, hf_hub_download, snapshot_download

with_eval, dreamsim_cache, depth_model = sys.argv[1] == "1", sys.argv[2], sys.argv[3]

try:
    HfApi().model_info("timbrooks/instruct-pix2pix", timeout=20)
except Exception as error:  # any failure here means the hub cannot be reached
    sys.exit(f"ERROR: cannot reach the Hugging Face hub ({type(error).__name__}: {error}).\n"
             "download_repos.sh needs network access; run it on a machine online, then copy "
             "~/.cache/huggingface (and the DreamSim cache) over, or point the config at local folders.")

training = ["timbrooks/instruct-pix2pix", "IDEA-Research/grounding-dino-tiny",
            "facebook/sam2.1-hiera-large", depth_model]
evaluation = ["openai/clip-vit-large-patch14", "facebook/dinov2-large", "yuvalkirstain/PickScore_v1",
              "google-bert/bert-base-uncased"]
for repo in training + (evaluation if with_eval else []):
    print(f"downloading {repo}", flush=True)
    snapshot_download(repo, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"])

if with_eval:
    snapshot_download("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", allow_patterns=["*.json", "*.txt"])
    hf_hub_download("xswu/HPSv2", "HPS_v2.1_compressed.pt")
    for name in ("ImageReward.pt", "med_config.json"):
        hf_hub_download("THUDM/ImageReward", name)

print(f"downloading DreamSim (dinov2_vitb14) into {dreamsim_cache}", flush=True)
from dreamsim import dreamsim

dreamsim(pretrained=True, device="cpu", cache_dir=dreamsim_cache, dreamsim_type="dinov2_vitb14", use_patch_model=True)
print("done: set HF_HUB_OFFLINE=1 to run without network")
PY
