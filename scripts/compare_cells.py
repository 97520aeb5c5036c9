"""python scripts/compare_cells.py task=shakespeare shakespeare=../shared/data/tinyshakespeare.txt seconds=600

Train every cell (and the regularisers that suit it) for the same wall-clock time at the same
parameter count, and write a table of the best validation value, steps and wall time (see
rnnlab/compare.py). Every setting and its default is in conf/compare.yaml. Other examples:

    python scripts/compare_cells.py task=seed seconds=60
    python scripts/compare_cells.py task=seed seconds=30 'configs={gru: [model.net.cell=gru], lstm: [model.net.cell=lstm]}' reference=lstm
"""

import hydra
from omegaconf import DictConfig, OmegaConf

from rnnlab.compare import run
from rnnlab.errors import report_errors


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare")
def main(cfg: DictConfig) -> None:
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("hydra", None)
    path = settings.pop("shakespeare")
    configs = settings.pop(f"{settings['task']}_configs") if settings.get("configs") is None else settings["configs"]
    settings.pop("seed_configs", None), settings.pop("shakespeare_configs", None)
    settings["configs"] = configs
    if settings["task"] == "shakespeare":
        if path is None:
            raise SystemExit("task=shakespeare needs shakespeare=<path to tinyshakespeare.txt>")
        settings["overrides"] = [f"data.path={path}", *settings["overrides"]]
    with report_errors():
        run(**settings)


if __name__ == "__main__":
    main()
