"""Test a trained model from its checkpoint alone.

    python scripts/eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
"""

import hydra
from omegaconf import DictConfig

from rnnlab.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
