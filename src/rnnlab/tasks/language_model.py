"""Character language modelling: next-character cross-entropy, bits per character,
perplexity, and a text sample logged to TensorBoard after every validation epoch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from .. import checks
from ..errors import ConfigError
from .base import RNNTask


class LanguageModelTask(RNNTask):
    """Trains a :class:`rnnlab.models.CharRNN`-like network: idx (B, T) -> (logits (B, T, V), h_n).

    Logs for every stage the loss in nats per character (``/loss``), bits per character
    (``/bpc`` = loss / ln 2) and perplexity (``/ppl`` = e^loss), each the exact mean over
    all characters of the epoch, and ``val/bpc_best``.

    Args:
        net, optimizer, scheduler: see :class:`RNNTask`.
        vocab: the characters of the vocabulary in id order (filled in from the data at
            training time); stored in the checkpoint so generation can decode.
        sample_prompt: text the validation sample starts from.
        sample_max_new_tokens: characters generated per sample.
        sample_temperature: sampling temperature (> 0).
        sample_seed: generator seed, fixed so samples of successive epochs are comparable.
        carry_state: truncated BPTT: carry the hidden state from each batch to the next
            (the data must be streams, ``data.stateful=true``, which fills this in); the
            state is reset at the start of every epoch of every stage.
    """

    monitor, monitor_mode = "val/bpc", "min"
    BATCH = (("ids", "BT", "int64"), ("next_ids", "BT", "int64"))
    BATCH_REQUIRED = 2

    def __init__(self, net, optimizer, scheduler=None, vocab: str | None = None,
                 sample_prompt: str = "\n", sample_max_new_tokens: int = 200,
                 sample_temperature: float = 0.8, sample_seed: int = 0, carry_state: bool | None = False):
        super().__init__(net, optimizer, scheduler, vocab=vocab, sample_prompt=sample_prompt,
                         sample_max_new_tokens=sample_max_new_tokens, sample_temperature=sample_temperature,
                         sample_seed=sample_seed, carry_state=bool(carry_state))
        if vocab is not None and len(vocab) != self.net.vocab_size:
            raise ConfigError("vocab", f"expected {self.net.vocab_size} characters (net.vocab_size), got {len(vocab)}")
        check_temperature("sample_temperature", sample_temperature)
        if vocab is not None:
            check_prompt("sample_prompt", sample_prompt, vocab)
        self.vocab = vocab
        self.carried: dict[str, object] = {}  # stage -> hidden state after its previous batch

    def loss_and_outputs(self, batch, stage):
        x, y = batch  # (B, T), (B, T)
        h0 = self.carried.get(stage) if self.hparams.carry_state else None
        logits, h_n = self.net(x, h0)  # (B, T, V)
        if self.hparams.carry_state:
            self.carried[stage] = detach_state(h_n)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())  # mean over B*T characters
        return loss, None, None, y.numel()

    def epoch_values(self, stage: str, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        values = super().epoch_values(stage, loss)
        values[f"{stage}/bpc"] = loss / math.log(2)
        values[f"{stage}/ppl"] = torch.exp(loss)
        return values

    def on_train_epoch_start(self) -> None:
        self.carried.pop("train", None)  # every epoch reads the streams from their start

    def on_validation_epoch_start(self) -> None:
        self.carried.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.carried.pop("test", None)

    def encode(self, text: str) -> torch.Tensor:
        stoi = {c: i for i, c in enumerate(self.vocab)}
        return torch.tensor([[stoi[c] for c in text]], dtype=torch.long, device=self.device)  # (1, T0)

    def decode(self, ids) -> str:
        return "".join(self.vocab[i] for i in ids)

    def sample(self, prompt: str, max_new_tokens: int, temperature: float, seed: int, top_k: int | None = None) -> str:
        """Generate ``max_new_tokens`` characters after ``prompt``; returns prompt + generated text."""
        if self.vocab is None:
            raise ValueError("this model has no vocabulary (model.vocab is None), so it cannot decode text")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        was_training = self.training
        self.eval()
        ids = self.net.generate(self.encode(prompt), max_new_tokens, temperature=temperature, top_k=top_k,
                                generator=generator)  # (1, T0 + max_new_tokens)
        self.train(was_training)
        return self.decode(ids[0].tolist())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.vocab is None or self.trainer.sanity_checking:
            return
        hp = self.hparams
        text = self.sample(hp.sample_prompt, hp.sample_max_new_tokens, hp.sample_temperature, hp.sample_seed)
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Indent by four spaces: TensorBoard renders text as Markdown, and a code
                # block keeps the line breaks and spacing of the sample.
                block = "\n".join("    " + line for line in text.split("\n"))
                logger.experiment.add_text("samples/val", block, global_step=self.global_step)


def check_temperature(key: str, temperature) -> None:
    """Raise a ConfigError for ``key`` unless ``temperature`` is a number > 0."""
    if not checks.is_number(temperature) or not temperature > 0:
        raise ConfigError(key, f"expected a number > 0, got {temperature!r}")


def check_prompt(key: str, prompt: str, vocab: str) -> None:
    """Raise a ConfigError for ``key`` unless ``prompt`` is non-empty text over ``vocab``."""
    missing = sorted(set(prompt) - set(vocab))
    if missing or not prompt:
        raise ConfigError(key, f"expected non-empty text over the model's {len(vocab)}-character vocabulary, "
                               f"got {prompt!r} (characters not in it: {missing})")


def detach_state(state):
    """Cut the graph at a window boundary (truncated backpropagation through time).

    The carried state keeps its values, so the next window starts where this one ended,
    but gradients stop here: without the detach, backward would run through every earlier
    window of the epoch (time and memory growing with each step) and into graphs that
    were already freed after their own backward.
    """
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
