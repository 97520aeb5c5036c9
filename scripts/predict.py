"""Predict with a trained classifier or tagger on a new file.

    python scripts/predict.py ckpt_path=<run>/checkpoints/last.ckpt input=new.npz output=predictions.csv
"""

import hydra
from omegaconf import DictConfig

from rnnlab.errors import report_errors
from rnnlab.predict import predict


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with report_errors():  # one line and exit status 1 for a bad value, file or checkpoint
        predict(cfg)


if __name__ == "__main__":
    main()
