"""A local Hugging Face Hub cache for tests: what `hf_hub_download` finds offline."""

import hashlib
import os
import sys
from pathlib import Path

# torch imports triton lazily, and triton's LLVM loaded after TensorFlow's segfaults the process
# (as tests/convert/conftest.py says); torch runs on the CPU here, where triton is never used.
sys.modules.setdefault("triton", None)

import timm  # noqa: E402
import torch  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_to_hub_cache(hub_cache: Path, repo_id: str, timm_name: str, seed: int = 0) -> Path:
    """Writes `repo_id` at revision main into a huggingface_hub cache: timm's `save_for_hf`
    output (config.json, model.safetensors) of a randomly initialised `timm_name`, as blobs
    named by their SHA-256 and snapshot links, the layout `hf_hub_download` reads."""
    torch.manual_seed(seed)
    model = timm.create_model(timm_name, pretrained=False)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong mapping shows in the logits
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    staging = hub_cache / "staging" / repo_id
    timm.models.save_for_hf(model, str(staging), safe_serialization=True)
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name in ("config.json", "model.safetensors"):
        data = (staging / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, repo / "snapshots" / COMMIT),
                   repo / "snapshots" / COMMIT / name)
    return repo / "snapshots" / COMMIT / "model.safetensors"
