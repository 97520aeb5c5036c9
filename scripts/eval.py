"""Test a trained model from its checkpoint alone.

    python scripts/eval.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
"""

import hydra
from omegaconf import DictConfig

from rnnlab.errors import report_errors
from rnnlab.eval import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with report_errors():  # one line and exit status 1 for a bad value, file or checkpoint
        evaluate(cfg)


if __name__ == "__main__":
    main()
