"""Train a model.

    python scripts/train.py model=classifier
    python scripts/train.py model=char_rnn data.path=../shared/data/tinyshakespeare.txt
    python scripts/train.py -m model=classifier model.net.hidden_size=32,64,128 model.net.num_layers=1,2,3

Resume a crashed or interrupted run exactly: its command again, plus
    hydra.run.dir=outputs/train/runs/<run> ckpt_path=last
"""

import hydra
from omegaconf import DictConfig

from rnnlab.errors import report_errors
from rnnlab.train import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with report_errors():  # one line and exit status 1 for a bad value, file or checkpoint
        return run(cfg)


if __name__ == "__main__":
    main()
