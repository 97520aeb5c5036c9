"""Test helpers: compose the real configs from conf/ with test overrides."""

import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn

import rnnlab.config  # noqa: F401  (registers the ${rnnlab.*} resolvers)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

# The torch.nn module each rnnlab cell is checked against.
TORCH_RNNS = {"rnn_tanh": nn.RNN, "rnn_relu": lambda *a, **k: nn.RNN(*a, nonlinearity="relu", **k), "gru": nn.GRU,
              "lstm": nn.LSTM}


def flat_state(state) -> list:
    """A state as a list of tensors: [h], or [h, c] for the LSTM's (h, c)."""
    return list(state) if isinstance(state, tuple) else [state]

# Small, fast versions of every dataset and a quiet CPU trainer.
TINY = {
    "synthetic": ["data.num_train=512", "data.num_val=128", "data.num_test=128"],
    "tagging": ["data.num_train=512", "data.num_val=128", "data.num_test=128"],
    "chars": ["data.corpus_chars=20000", "data.seq_len=32", "data.windows_per_epoch=256"],
}
QUIET = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]


def compose_config(config_name: str, overrides: list[str], output_dir: Path):
    """Compose conf/<config_name>.yaml as Hydra would, with outputs under ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    if "paths" in cfg:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


def carried_bpc(net, ids, batch_size: int, seq_len: int) -> float:
    """bpc of ``net`` on ``ids`` read as batch_size streams, the state carried window to window,
    written out here independently of the data module (the last window shorter)."""
    per = len(ids) // batch_size
    streams = ids[: per * batch_size].view(batch_size, per)
    h, total, count = None, 0.0, 0
    with torch.no_grad():
        for start in range(0, per - 1, seq_len):
            x = streams[:, start:min(start + seq_len, per - 1)]
            y = streams[:, start + 1:start + 1 + x.shape[1]]
            logits, h = net(x, h)
            total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            count += y.numel()
    return total / count / math.log(2)
