"""Where the project lives, for configs: registers the `${s2s_root:}` OmegaConf resolver."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> str:
    """The directory holding conf/ and datasets/: the repository, else the working directory."""
    return str(REPO_ROOT if (REPO_ROOT / "conf").is_dir() else Path.cwd())


if not OmegaConf.has_resolver("s2s_root"):
    OmegaConf.register_new_resolver("s2s_root", project_root)
