"""The checks every part of rnnlab makes of its arguments and inputs, in one place.

Every check raises before any computation, with a message that states what was expected
and what was received, so that a bad call fails at the caller's line instead of deep
inside a matrix product. Constructor checks raise :class:`ArgumentError` or
:class:`ArgumentTypeError`, which name the argument: an object built from a config then
reports the full config key (``model.net.hidden_size: expected hidden_size >= 1, got 0``).
"""

from __future__ import annotations

import torch


class ArgumentError(ValueError):
    """A constructor argument with a value outside what it allows. ``argument`` names the
    parameter, so an error from a config-built object can name the full config key
    (``model.net.hidden_size``)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


class ArgumentTypeError(TypeError):
    """A constructor argument of the wrong type; ``argument`` names the parameter."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def is_int(value) -> bool:
    """An int, and not a bool (``True`` is an int to Python, never a count to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float, and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(name: str, value, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if not is_int(value) or value < minimum:
        raise ArgumentError(name, f"expected {name} to be an int >= {minimum}, got {value!r}")
    return value


def positive_number(name: str, value) -> float:
    """Return ``value`` if it is a number > 0, else raise naming ``name``."""
    if not is_number(value) or not value > 0:
        raise ArgumentError(name, f"expected {name} to be a number > 0, got {value!r}")
    return value


def positive_int(name: str, value) -> int:
    """Return ``value`` if it is an int >= 1, else raise naming ``name``."""
    if not is_int(value):
        raise ArgumentTypeError(name, f"expected {name} to be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ArgumentError(name, f"expected {name} >= 1, got {value}")
    return value


def dropout_prob(name: str, value) -> float:
    """Return ``value`` as a float if it lies in [0, 1), else raise naming ``name``."""
    if not is_number(value):
        raise ArgumentTypeError(name, f"expected {name} to be a float in [0, 1), got {value!r} "
                                      f"({type(value).__name__})")
    if not 0.0 <= value < 1.0:
        raise ArgumentError(name, f"expected {name} in [0, 1), got {value}")
    return float(value)


def one_of(name: str, value, choices) -> None:
    """Raise naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ArgumentError(name, f"expected {name} in {sorted(choices)}, got {value!r}")


def shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def tuple_str(items) -> str:
    """``(a, b)``, and ``(a,)`` for one item, as Python writes a tuple."""
    return "(" + ", ".join(str(s) for s in items) + ("," if len(items) == 1 else "") + ")"


def token_ids(name: str, idx, vocab_size: int) -> None:
    """Check a (B, T) integer tensor of token ids in [0, vocab_size)."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of int64 ids, got {type(idx).__name__}")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"expected {name} of integer dtype (token ids), got {idx.dtype}")
    if idx.dim() != 2:
        raise ValueError(f"expected {name} of shape (B, T), got {shape_str(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError(f"expected a non-empty {name} of shape (B, T), got {shape_str(idx.shape)}")
    low, high = torch.aminmax(idx)
    if low < 0 or high >= vocab_size:
        bad = int(low) if low < 0 else int(high)
        raise ValueError(f"expected {name} ids in [0, {vocab_size}), got id {bad}")


def same_dtype_device(name: str, tensor: torch.Tensor, like: torch.Tensor) -> None:
    """Raise unless ``tensor`` has the dtype and device of ``like`` (the module's weights)."""
    if tensor.dtype != like.dtype:
        raise TypeError(f"expected {name} of dtype {like.dtype} (the module's parameters), got {tensor.dtype}")
    if tensor.device != like.device:
        raise ValueError(f"expected {name} on device {like.device} (the module's parameters), got {tensor.device}")


def sequence_input(
    x, input_size: int, batch_first: bool, weight: torch.Tensor
) -> None:
    """Check a (B, T, D), (T, B, D) or unbatched (T, D) float input against the module."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected input to be a torch.Tensor, got {type(x).__name__}")
    layout = "(B, T, D)" if batch_first else "(T, B, D)"
    if x.dim() not in (2, 3):
        raise ValueError(
            f"expected a 3-D input {layout} or an unbatched 2-D input (T, D), "
            f"got {x.dim()}-D input of shape {shape_str(x.shape)}"
        )
    if x.shape[-1] != input_size:
        expected = layout.replace("D", str(input_size)) if x.dim() == 3 else f"(T, {input_size})"
        raise ValueError(f"expected input of shape {expected}, got {shape_str(x.shape)}")
    if x.dim() == 3:
        batch, time = (x.shape[0], x.shape[1]) if batch_first else (x.shape[1], x.shape[0])
    else:
        batch, time = 1, x.shape[0]
    if time == 0:
        raise ValueError(f"expected a sequence of at least one time step, got T=0 in input of shape {shape_str(x.shape)}")
    if batch == 0:
        raise ValueError(f"expected a batch of at least one sequence, got B=0 in input of shape {shape_str(x.shape)}")
    same_dtype_device("input", x, weight)


def state(name: str, h, expected_shape: tuple, weight: torch.Tensor) -> None:
    """Check a recurrent state tensor such as h0 (L, B, H) against the expected shape."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor, got {type(h).__name__}")
    if tuple(h.shape) != tuple(expected_shape):
        raise ValueError(f"expected {name} of shape {shape_str(expected_shape)}, got {shape_str(h.shape)}")
    same_dtype_device(name, h, weight)
