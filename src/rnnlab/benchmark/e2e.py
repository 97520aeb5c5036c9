"""The end-to-end rows: generation against the same sampling loop with torch.nn modules, and a
Lightning training epoch through ``rnnlab.train.train`` against a bare PyTorch loop with a
torch.nn model of the same size on the same data (:func:`e2e_note` lists what each side does)."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ..models import CharRNN
from ..train import train
from .timing import Result, make_result, time_interleaved

# The generation model: conf/model/char_rnn.yaml's sizes with tinyshakespeare's 65 characters.
GEN_VOCAB, GEN_EMBED, GEN_HIDDEN, GEN_LAYERS, GEN_DROPOUT = 65, 64, 256, 3, 0.1
GEN_PROMPT_LEN, GEN_TEMPERATURE = 16, 0.8



class TorchCharLM(nn.Module):
    """rnnlab's CharRNN written with torch.nn: Embedding, RNN / GRU / LSTM, Dropout, Linear.

    Inputs: idx (B, T) int64; h0 (L, B, H) or None. Outputs: logits (B, T, V); h_n (L, B, H).
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.RNN(embed_dim, hidden_size, num_layers, nonlinearity="tanh", batch_first=True,
                          dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, vocab_size)

    @classmethod
    def from_rnnlab(cls, lm: CharRNN) -> "TorchCharLM":
        """A copy of ``lm``'s weights; the recurrent module comes from ``lm.rnn.to_torch()`` (an
        ``nn.RNN``, ``nn.GRU`` or ``nn.LSTM`` for the cell ``lm`` has)."""
        rnn = lm.rnn
        model = cls(lm.vocab_size, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.dropout)
        model.embedding.load_state_dict(lm.embedding.state_dict())
        model.rnn = rnn.to_torch()
        model.fc.load_state_dict(lm.fc.state_dict())
        return model.to(lm.fc.weight.device)

    def forward(self, idx: torch.Tensor, h0: torch.Tensor | None = None):
        outputs, h_n = self.rnn(self.embedding(idx), h0)  # (B, T, H), (L, B, H)
        return self.fc(self.dropout(outputs)), h_n  # (B, T, V)


@torch.no_grad()
def torch_generate(model: TorchCharLM, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
                   generator: torch.Generator) -> torch.Tensor:
    """CharRNN.generate's loop without top-k: prompt (B, T0) -> ids (B, T0 + max_new_tokens)."""
    tokens = [prompt]
    logits, h = model(prompt)  # (B, T0, V), (L, B, H)
    for i in range(max_new_tokens):
        probs = F.softmax(logits[:, -1] / temperature, dim=-1)  # (B, V)
        tokens.append(torch.multinomial(probs, 1, generator=generator))  # (B, 1)
        if i + 1 < max_new_tokens:
            logits, h = model(tokens[-1], h)  # (B, 1, V), (L, B, H)
    return torch.cat(tokens, dim=1)


def generate_row(max_new_tokens: int, reps: int, warmup: int, device: torch.device, cell: str = "rnn_tanh") -> Result:
    torch.manual_seed(0)
    ours = CharRNN(GEN_VOCAB, GEN_EMBED, GEN_HIDDEN, GEN_LAYERS, GEN_DROPOUT, cell=cell).to(device).eval()
    reference = TorchCharLM.from_rnnlab(ours).eval()
    prompt = torch.randint(0, GEN_VOCAB, (1, GEN_PROMPT_LEN), device=device)  # (1, T0)

    # A fresh generator per call, so that every call samples the same sequence.
    def rnnlab_side():
        ours.generate(prompt, max_new_tokens, temperature=GEN_TEMPERATURE, generator=torch.Generator(device).manual_seed(0))

    def torch_side():
        torch_generate(reference, prompt, max_new_tokens, GEN_TEMPERATURE, torch.Generator(device).manual_seed(0))

    t_ours, t_ref = time_interleaved([rnnlab_side, torch_side], reps, warmup, device)
    shape = (f"B1 T0={GEN_PROMPT_LEN} V{GEN_VOCAB} D{GEN_EMBED} H{GEN_HIDDEN} L{GEN_LAYERS}, "
             f"{max_new_tokens} tokens" + ("" if cell == "rnn_tanh" else f" {cell}"))
    module = type(reference.rnn).__name__
    return make_result("generate", shape, device, [max_new_tokens / t for t in t_ours], [max_new_tokens / t for t in t_ref],
                       "tokens/s",
                       f"nn.Embedding + nn.{module} + nn.Linear loop",
                       f"eval mode, no_grad, multinomial sampling at temperature {GEN_TEMPERATURE}, same weights",
                       cell=cell)




def compose_train_config(conf_dir: str | Path, overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml composed as ``scripts/train.py <overrides>`` would compose it.

    HydraConfig is set so that ``${hydra:...}`` paths resolve; each timed run then gets
    its own output directory (see :func:`pipeline_epoch`).
    """
    conf_dir = Path(conf_dir).resolve()
    if not (conf_dir / "train.yaml").is_file():
        raise ValueError(f"conf_dir: expected a directory holding train.yaml, got {str(conf_dir)!r}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def pipeline_epoch(cfg: DictConfig) -> Callable[[], None]:
    """rnnlab.train.train(cfg) in a fresh temporary output directory (removed afterwards)."""
    def run():
        with tempfile.TemporaryDirectory(prefix="rnnlab-bench-") as out:
            run_cfg = copy.deepcopy(cfg)
            with open_dict(run_cfg):
                run_cfg.paths.output_dir = out
            train(run_cfg)
    return run


@contextlib.contextmanager
def quiet_pipeline() -> Iterator[None]:
    """Silence Lightning's banners and hints and train()'s summary, which would otherwise be
    printed again by each of the warmup + reps runs of the pipeline."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "rnnlab.train")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


BARE_LOOP = "bare PyTorch loop with torch.nn.RNN"


def run_e2e(row: str, cfg: DictConfig, bare: Callable[[], None], reps: int, warmup: int,
            device: torch.device, shape: str, note: str) -> Result:
    with quiet_pipeline():
        t_ours, t_ref = time_interleaved([pipeline_epoch(cfg), bare], reps, warmup, device)
    return make_result(row, shape, device, t_ours, t_ref, "s", BARE_LOOP, note)


# Settings under which the bare loops do the same work as the pipeline: an Elman tanh RNN,
# independent fixed-length windows or sequences.
BARE_EQUIVALENT = {"model.net.cell": "rnn_tanh", "data.min_len": None, "data.stateful": False,
                   "data.train_windows": "random"}


def check_bare_equivalent(row: str, cfg: DictConfig) -> None:
    for key, expected in BARE_EQUIVALENT.items():
        value = OmegaConf.select(cfg, key, default=expected)
        if value != expected:
            raise ValueError(f"{row}: the bare loop assumes {key}={expected}, got {key}={value!r}; "
                             "remove that override")


def e2e_note(cfg: DictConfig, train_batches: int, val_batches: int, extra: str) -> str:
    """What each side of an end-to-end row does, in the words of the table."""
    clip = cfg.trainer.gradient_clip_val
    clipping = f", gradient-norm clip {clip}" if clip else ""
    return (f"both sides, timed: build the data and the model, 1 training epoch ({train_batches} batches, "
            f"{cfg.model.optimizer['_target_'].rsplit('.', 1)[-1]}{clipping}), 1 full validation pass "
            f"({val_batches} batches). rnnlab side also: Trainer and callbacks, Lightning's sanity-check "
            f"validation (2 batches), torchmetrics, TensorBoard logging with histograms, 2 checkpoints{extra}; "
            "test=false; Hydra's compose is not timed")


def train_epoch(model: nn.Module, batches: Iterator, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                clip: float | None, device: torch.device) -> None:
    model.train()
    for x, y in batches:
        loss = loss_fn(model, x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()


@torch.no_grad()
def validate(model: nn.Module, batches: Iterator, loss_fn: Callable, device: torch.device) -> float:
    """Mean loss over the batches (each weighted by its first dimension)."""
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for x, y in batches:
        total += loss_fn(model, x.to(device), y.to(device)) * len(x)
        count += len(x)
    return total.item() / count


class TorchClassifier(nn.Module):
    """rnnlab's SequenceClassifier written with torch.nn: RNN, dropout on h_n[-1], Linear.

    Inputs: x (B, T, D). Outputs: logits (B, C).
    """

    def __init__(self, input_size: int, hidden_size: int, num_classes: int, num_layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, num_layers, nonlinearity="tanh", batch_first=True,
                          dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.rnn(x)  # (L, B, H)
        return self.fc(self.dropout(h_n[-1]))  # (B, C)


def classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)  # x (B, T, D), y (B,)


def char_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over B*T characters


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator:
    """(x, y) batches in a random order: randperm, then slices of it."""
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]


def ordered_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def random_windows(ids: torch.Tensor, seq_len: int, count: int, batch_size: int) -> Iterator:
    """``count`` windows starting anywhere in ids (data.train_windows=random), in batches of
    x (B, T) and y (B, T), y being x shifted one character ahead."""
    offsets = torch.arange(seq_len + 1)
    for start in range(0, count, batch_size):
        starts = torch.randint(0, len(ids) - seq_len, (min(batch_size, count - start), 1))  # (B, 1)
        window = ids[starts + offsets]  # (B, T + 1)
        yield window[:, :-1], window[:, 1:]


def strided_windows(ids: torch.Tensor, seq_len: int, batch_size: int) -> Iterator:
    """Non-overlapping windows in order, as CharDataModule validates."""
    offsets = torch.arange(seq_len + 1)
    starts = torch.arange((len(ids) - seq_len - 1) // seq_len + 1) * seq_len
    for batch in starts.split(batch_size):
        window = ids[batch[:, None] + offsets]  # (B, T + 1)
        yield window[:, :-1], window[:, 1:]


def e2e_classifier_row(conf_dir: str | Path, overrides: Sequence[str], reps: int, warmup: int,
                       device: torch.device) -> Result:
    cfg = compose_train_config(conf_dir, ["model=classifier", *pipeline_overrides(device), *overrides])
    check_bare_equivalent("classifier_overrides", cfg)
    data, net = cfg.data, cfg.model.net

    def bare():
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(data)
        datamodule.setup("fit")
        (x, y), (x_val, y_val) = datamodule.splits["train"].tensors, datamodule.splits["val"].tensors
        model = TorchClassifier(datamodule.input_size, net.hidden_size, datamodule.num_classes, net.num_layers,
                                net.dropout).to(device)
        optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
        train_epoch(model, shuffled_batches(x, y, data.batch_size), classifier_loss, optimizer,
                    cfg.trainer.gradient_clip_val, device)
        validate(model, ordered_batches(x_val, y_val, data.batch_size), classifier_loss, device)

    train_batches, val_batches = math.ceil(data.num_train / data.batch_size), math.ceil(data.num_val / data.batch_size)
    shape = f"seed task: {train_batches} x B{data.batch_size} T{data.seq_len} D{data.input_size}"
    note = e2e_note(cfg, train_batches, val_batches, ", the scheduler step")
    return run_e2e("e2e_classifier", cfg, bare, reps, warmup, device, shape, note)


def e2e_char_row(conf_dir: str | Path, shakespeare: str | None, char_windows: int, overrides: Sequence[str],
                 reps: int, warmup: int, device: torch.device) -> Result:
    if shakespeare is None or not Path(shakespeare).expanduser().is_file():
        why = "no shakespeare path given" if shakespeare is None else f"file not found: {shakespeare}"
        return make_result("e2e_char", "tinyshakespeare", device, None, None, "s", BARE_LOOP, f"skipped: {why}")
    cfg = compose_train_config(conf_dir, ["model=char_rnn", f"data.windows_per_epoch={char_windows}",
                                          *pipeline_overrides(device), *overrides])
    with open_dict(cfg):  # set here, not as an override, so no path needs quoting for Hydra
        cfg.data.path = str(Path(shakespeare).expanduser().resolve())
    check_bare_equivalent("char_overrides", cfg)
    data, net = cfg.data, cfg.model.net

    def bare():
        torch.manual_seed(cfg.seed)
        datamodule = instantiate(data)
        datamodule.setup("fit")
        ids, val_ids = datamodule.ids["train"], datamodule.ids["val"]
        model = TorchCharLM(datamodule.vocab_size, net.embed_dim, net.hidden_size, net.num_layers,
                            net.dropout).to(device)
        optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())
        train_epoch(model, random_windows(ids, data.seq_len, data.windows_per_epoch, data.batch_size),
                    char_loss, optimizer, cfg.trainer.gradient_clip_val, device)
        validate(model, strided_windows(val_ids, data.seq_len, data.batch_size), char_loss, device)

    train_batches = math.ceil(data.windows_per_epoch / data.batch_size)
    # CharDataModule's split: the validation text is int(len * fraction) characters.
    val_chars = int(len(Path(data.path).read_text(encoding="utf-8")) * data.splits[1])
    val_batches = math.ceil(((val_chars - data.seq_len - 1) // data.seq_len + 1) / data.batch_size)
    shape = f"tinyshakespeare: {train_batches} x B{data.batch_size} T{data.seq_len}"
    note = e2e_note(cfg, train_batches, val_batches,
                    f", a {cfg.model.sample_max_new_tokens}-character text sample after validation")
    return run_e2e("e2e_char", cfg, bare, reps, warmup, device, shape, note)


def pipeline_overrides(device: torch.device) -> list[str]:
    """One epoch, no test, no progress bar or model summary; loggers and checkpoints stay."""
    return ["trainer.max_epochs=1", "test=false", f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
            "callbacks.rich_progress_bar=null", "callbacks.rich_model_summary=null"]
