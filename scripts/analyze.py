"""Hidden-state heatmaps, gradient flow over time, saturation and PCA trajectories of a trained model.

    python scripts/analyze.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt
"""

import hydra
from omegaconf import DictConfig

from rnnlab.analyze import analyze_checkpoint
from rnnlab.errors import report_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    with report_errors():  # one line and exit status 1 for a bad value, file or checkpoint
        analyze_checkpoint(cfg.ckpt_path, cfg.num_examples, cfg.out_dir)


if __name__ == "__main__":
    main()
