"""Generate with a trained s2s model; see conf/generate.yaml for every key.

python generate.py ckpt=PATH prompt="How <mask> doing?"
python generate.py ckpt=PATH                        (interactive)
python generate.py ckpt=PATH input_file=in.jsonl output_file=out.jsonl
"""

import sys

import hydra
from omegaconf import DictConfig

from s2s.cli import run_cli
from s2s.cli_generate import quote_free_text


@hydra.main(config_path="conf", config_name="generate", version_base=None)
def main(cfg: DictConfig) -> None:
    from s2s.pipeline import generate

    run_cli(generate, cfg)


if __name__ == "__main__":
    sys.argv = quote_free_text(sys.argv)
    main()
