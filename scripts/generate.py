"""Sample text from a trained character model.

    python scripts/generate.py ckpt_path=<run>/checkpoints/last.ckpt prompt="ROMEO:" max_new_tokens=500 temperature=0.8
"""

import hydra
from omegaconf import DictConfig

from rnnlab.errors import report_errors
from rnnlab.generate import generate


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with report_errors():  # one line and exit status 1 for a bad value, file or checkpoint
        generate(cfg)


if __name__ == "__main__":
    main()
