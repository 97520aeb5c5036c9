"""python scripts/benchmark.py shakespeare=../shared/data/tinyshakespeare.txt

Benchmark rnnlab's RNN, generation and training pipeline against plain PyTorch (see
rnnlab/benchmark/); every setting and its default is in conf/benchmark.yaml. Other examples:

    python scripts/benchmark.py shapes=[seed] reps=3
    python scripts/benchmark.py rows=[forward,backward,memory] device=cuda
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from rnnlab.benchmark import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    run(**OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
