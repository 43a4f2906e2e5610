"""`hf:NAME` checkpoint names: a model in the local Hugging Face cache, found by its hub name.

    python generate.py ckpt=hf:google/flan-t5-base prompt="..."
    python train.py experiment=finetune_hf init_from=hf:google-t5/t5-small@main ...

The name resolves through `huggingface_hub` (installed with `transformers`; not a dependency of
s2s itself) to its snapshot directory, from local files only: a run never downloads unless
S2S_HUB_DOWNLOAD=1 says it may. The cache is `huggingface_hub`'s (HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub). What is not cached, offline, is one line saying
how to download it.
"""

from __future__ import annotations

import os
from pathlib import Path

from s2s.checkpoint import CheckpointError

PREFIX = "hf:"
DOWNLOAD_ENV = "S2S_HUB_DOWNLOAD"  # "1": a name missing from the cache may be downloaded
# the files a model directory needs (no TF / Flax / ONNX weights)
FILES = ["*.json", "*.safetensors", "pytorch_model*.bin", "spiece.model", "*.txt", "*.model"]


def is_hub_name(path: str | os.PathLike) -> bool:
    return str(path).startswith(PREFIX)


def resolve(name: str, key: str) -> Path:
    """The local snapshot directory of `hf:ORG/NAME[@REVISION]`; `key` names the setting."""
    repo, _, revision = name[len(PREFIX) :].partition("@")
    if not repo or repo.count("/") > 1:
        raise CheckpointError(f"{key}={name}: expected hf:NAME or hf:ORG/NAME[@REVISION]")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{key}={name}: hub names need huggingface_hub (pip install huggingface_hub), or "
            "give the model's local directory"
        ) from None
    download = os.environ.get(DOWNLOAD_ENV) == "1"
    cache = os.environ.get("HF_HUB_CACHE")  # read now, so a changed environment counts
    try:
        path = snapshot_download(
            repo,
            revision=revision or None,
            local_files_only=not download,
            allow_patterns=FILES,
            cache_dir=cache,
        )
    except Exception as err:  # LocalEntryNotFoundError, a network or repository error
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not download:
            raise CheckpointError(
                f"{key}={name}: not in the local Hugging Face cache; download it once where a "
                f"network is reachable (huggingface-cli download {repo}), or let s2s download "
                f"it with {DOWNLOAD_ENV}=1"
            ) from None
        raise CheckpointError(f"{key}={name}: could not download ({reason[:200]})") from None
    return Path(path)
