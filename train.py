"""Train an s2s model: `python train.py [group=option ...] [key=value ...]` (see README)."""

import hydra
from omegaconf import DictConfig

from s2s.cli import run_cli


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from s2s.pipeline import train

    result = run_cli(train, cfg)
    return result["metrics"].get(cfg.metric) if result else None


if __name__ == "__main__":
    main()
