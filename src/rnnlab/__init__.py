"""rnnlab: recurrent neural networks written from scratch in PyTorch, trained with
Lightning and configured with Hydra.

Shape notation used in every docstring and shape comment of the package:

    B  batch size
    T  time steps (sequence length)
    D  input features per step
    H  hidden units per layer
    V  vocabulary size (character models)
    L  number of stacked layers

Tensors are batch-first, (B, T, D), unless a module is built with ``batch_first=False``,
in which case they are time-first, (T, B, D). Recurrent states are always (L, B, H),
as in ``torch.nn.RNN``.
"""

__version__ = "0.1.0"
