"""The multi-layer RNN: a stack of cells (Elman tanh/ReLU, GRU or LSTM) unrolled over time.

Two forms of the same computation live here:

* ``forward`` is layer-major: each layer runs over the whole sequence before the next
  one starts, so the layer's input projection ``Wxh x_t`` for all T steps is one matrix
  product and only ``Whh h_{t-1}`` stays inside the time loop.
* ``step_layers`` is the seed article's loop body, time-major: one step of the input
  through every cell. ``step`` (streaming one step at a time) and ``forward_stepwise``
  (the whole sequence, optionally keeping every step's states, as the analysis tools and
  generation use it) are built on it: it is the one time-major loop of the package.

Both give the same numbers (the tests check it, and check both against ``torch.nn.RNN``).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import checks
from .cells import CELLS, TORCH_CELLS, make_cell
from .dropout import Dropout
from .regularisers import LockedDropout, WeightDrop, zoneout

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # h (L, B, H), or (h, c) for the LSTM
Layers = list[tuple[torch.Tensor, ...]]  # per layer its state as a tuple, (h,) or (h, c), each (B, H)


class RNN(nn.Module):
    r"""A multi-layer recurrent network built from one kind of cell.

    For each layer l and time step t, with the default Elman tanh cell:

    .. math::
        h^{(l)}_t = \tanh(W^{(l)}_{xh} x^{(l)}_t + b^{(l)}_{xh} + W^{(l)}_{hh} h^{(l)}_{t-1} + b^{(l)}_{hh})

    where :math:`x^{(0)}_t` is the input and :math:`x^{(l)}_t = \mathrm{dropout}(h^{(l-1)}_t)`
    for l > 0 (the GRU and LSTM cells replace the update, see :mod:`rnnlab.models.cells`).
    Dropout acts between layers only, never along time within a layer (dropping along time
    would corrupt the hidden-state trajectory), and only in training mode. Equivalent plain
    loop (``forward_stepwise``)::

        for t in range(T):
            x_t = x[:, t]
            for l, cell in enumerate(cells):
                h[l] = cell(x_t, h[l])
                x_t = dropout(h[l]) if l < L - 1 else h[l]
            outputs.append(h[-1])

    Args:
        input_size: number of input features D.
        hidden_size: number of hidden units H in every layer.
        num_layers: number of stacked layers L. Default: 1.
        dropout: probability of dropping each output of every layer but the last,
            in [0, 1). Default: 0.0.
        bias: if ``False`` the cells have no biases. Default: ``True``.
        batch_first: if ``True`` inputs and outputs are (B, T, ·), else (T, B, ·).
            States are (L, B, H) either way. Default: ``True``.
        cell: ``"rnn_tanh"`` (the seed's Elman cell), ``"rnn_relu"``, ``"gru"``, ``"lstm"``,
            or one of the cells of :mod:`rnnlab.models.modern_cells`: ``"min_gru"``,
            ``"min_lstm"``, ``"indrnn"``, ``"ln_lstm"``. Default: ``"rnn_tanh"``.
        cell_options: further arguments of every layer's cell, for cells that have them
            (``indrnn``: ``max_steps``, ``magnitude``). Default: none.
        locked_dropout: if ``True`` the dropout between layers draws one mask per sequence,
            the same at every step (variational dropout, :class:`LockedDropout`). Default: ``False``.
        weight_drop: probability of dropping each recurrent weight (W_hh, or IndRNN's u) in
            training, one mask per forward pass (DropConnect, :class:`WeightDrop`). Default: 0.0.
        zoneout: probability that a unit keeps its previous value at a training step; in
            evaluation the expectation (:func:`zoneout`). The layers then run their
            readable step loop. Default: 0.0.

    Inputs: x, h0, lengths
        - **x**: (B, T, D) if ``batch_first`` else (T, B, D); or unbatched (T, D).
        - **h0**: (L, B, H) initial states, or (L, H) for unbatched input; for the LSTM
          cells (``lstm``, ``ln_lstm``) a tuple (h0, c0) of such tensors. Default: zeros.
        - **lengths**: (B,) int64, the number of valid steps of each sequence of a padded
          batch, each in [1, T]. Default: every sequence has T steps.

    Outputs: outputs, h_n
        - **outputs**: (B, T, H) if ``batch_first`` else (T, B, H), or (T, H) unbatched:
          the top layer's hidden state at every step; zero past a sequence's length.
        - **h_n**: (L, B, H), or (L, H) unbatched: every layer's state after each
          sequence's last valid step; for the LSTM a tuple (h_n, c_n).

    Attributes:
        cells: ``nn.ModuleList`` of L cells; ``cells[0]`` maps D -> H and the others H -> H.
        dropout: the dropout probability (a float, as in ``torch.nn.RNN``).
        layer_dropout: the :class:`Dropout` between layers, or None.

    Example::

        >>> rnn = RNN(10, 64, num_layers=2, dropout=0.2)
        >>> outputs, h_n = rnn(torch.randn(32, 20, 10))
        >>> outputs.shape, h_n.shape
        (torch.Size([32, 20, 64]), torch.Size([2, 32, 64]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        cell: str = "rnn_tanh",
        cell_options: dict | None = None,
        locked_dropout: bool = False,
        weight_drop: float = 0.0,
        zoneout: float = 0.0,
    ):
        super().__init__()
        self.input_size = checks.positive_int("input_size", input_size)
        self.hidden_size = checks.positive_int("hidden_size", hidden_size)
        self.num_layers = checks.positive_int("num_layers", num_layers)
        self.dropout = checks.dropout_prob("dropout", dropout)
        checks.one_of("cell", cell, CELLS)
        self.bias, self.batch_first, self.cell = bool(bias), bool(batch_first), cell
        self.cell_options = dict(cell_options or {})
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if layer == 0 else hidden_size, hidden_size, bias=bias,
                      options=self.cell_options)
            for layer in range(num_layers)
        )
        if dropout > 0 and num_layers == 1:  # as torch.nn.RNN warns
            warnings.warn(f"dropout acts between stacked layers, so it needs num_layers > 1, got dropout={dropout} "
                          "and num_layers=1: no dropout is applied", UserWarning, stacklevel=2)
        self.locked_dropout = bool(locked_dropout)
        self.weight_drop = checks.dropout_prob("weight_drop", weight_drop)
        self.zoneout = checks.dropout_prob("zoneout", zoneout)
        between = LockedDropout(dropout, time_dim=0) if self.locked_dropout else Dropout(dropout)
        self.layer_dropout = between if dropout > 0 and num_layers > 1 else None
        if self.weight_drop > 0:
            for layer_cell in self.cells:
                parametrize.register_parametrization(*_recurrent_weight(layer_cell, cell), WeightDrop(self.weight_drop))

    @property
    def is_lstm(self) -> bool:
        """Whether the state is a pair (h, c) (``lstm``, ``ln_lstm``) rather than one tensor h."""
        return self.cells[0].state_size == 2

    # ------------------------------------------------------------------ states
    def check_state(self, name: str, state, shape: tuple) -> tuple[torch.Tensor, ...]:
        """Validate a state (a tensor, or (h, c) for the LSTM) of ``shape``; return it as a tuple."""
        w = self.cells[0].Wxh.weight
        if self.is_lstm:
            if not isinstance(state, (tuple, list)) or len(state) != 2:
                raise TypeError(f"expected {name} as a tuple (h, c) for cell={self.cell!r}, got {type(state).__name__}")
            names = (f"{name}[0] (h)", f"{name}[1] (c)")
        else:
            if isinstance(state, (tuple, list)):
                raise TypeError(f"expected {name} as one tensor for cell={self.cell!r}, got a {type(state).__name__}")
            state, names = (state,), (name,)
        for n, s in zip(names, state):
            checks.state(n, s, shape, w)
        return tuple(state)

    def public_state(self, parts: tuple[torch.Tensor, ...]) -> State:
        """A state tuple as this RNN takes and returns it: h, or (h, c) for the LSTM."""
        return tuple(parts) if self.is_lstm else parts[0]

    def _prepare(self, x: torch.Tensor, h0: State | None, lengths: torch.Tensor | None = None):
        """Validate, add a batch dimension to unbatched input, build h0 and the length mask.

        Returns (x, state, mask, unbatched): x 3-D in the module's layout, state a tuple of
        (L, B, H) tensors, mask (T, B, 1) bool or None.
        """
        w = self.cells[0].Wxh.weight
        checks.sequence_input(x, self.input_size, self.batch_first, w)
        unbatched = x.dim() == 2
        if unbatched:
            if lengths is not None:
                raise ValueError("expected lengths only with batched 3-D input, got lengths with unbatched (T, D) input")
            x = x.unsqueeze(0 if self.batch_first else 1)  # (1, T, D) or (T, 1, D)
        batch, time = (x.shape[0], x.shape[1]) if self.batch_first else (x.shape[1], x.shape[0])
        if h0 is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)  # (L, B, H)
            state = (zeros, zeros) if self.is_lstm else (zeros,)
        elif unbatched:
            state = self.check_state("h0", h0, (self.num_layers, self.hidden_size))
            state = tuple(s.unsqueeze(1) for s in state)  # each (L, 1, H)
        else:
            state = self.check_state("h0", h0, (self.num_layers, batch, self.hidden_size))
        mask = None if lengths is None else _length_mask(lengths, batch, time, x.device)
        return x, state, mask, unbatched

    def _finish(self, outputs: torch.Tensor, h_n: tuple[torch.Tensor, ...], unbatched: bool):
        """outputs (B, T, H) / (T, B, H) and h_n, each (L, B, H), in the caller's form."""
        if unbatched:
            outputs = outputs.squeeze(0 if self.batch_first else 1)  # (T, H)
            h_n = tuple(s.squeeze(1) for s in h_n)  # each (L, H)
        return outputs, self.public_state(h_n)

    # ----------------------------------------------------------- fast forward
    def forward(self, x: torch.Tensor, h0: State | None = None, lengths: torch.Tensor | None = None):
        """Inputs: x (B, T, D) [batch_first] or (T, B, D) or (T, D); h0 (L, B, H) [or (h0, c0)] or None;
        lengths (B,) or None.

        Outputs: outputs (B, T, H) / (T, B, H) / (T, H); h_n (L, B, H) or (L, H) [or (h_n, c_n)].
        """
        x, state, mask, unbatched = self._prepare(x, h0, lengths)
        # Time-major inside: every step reads a contiguous (B, H) slice of a (T, B, H) tensor.
        layer_input = x.transpose(0, 1) if self.batch_first else x  # (T, B, D)
        finals = []
        with self._one_weight_mask():
            for layer, layer_cell in enumerate(self.cells):
                if layer > 0 and self.layer_dropout is not None:
                    layer_input = self.layer_dropout(layer_input)
                layer_state = tuple(s[layer] for s in state)
                if self.zoneout > 0:
                    layer_input, final = self._zoneout_sequence(layer_cell, layer_input, layer_state, mask)
                else:
                    layer_input, final = layer_cell.forward_sequence(layer_input, layer_state, mask)
                finals.append(final)
        outputs = layer_input.transpose(0, 1) if self.batch_first else layer_input  # (B, T, H) or (T, B, H)
        return self._finish(outputs, tuple(torch.stack(parts) for parts in zip(*finals)), unbatched)  # (L, B, H)

    def _one_weight_mask(self):
        """With weight drop: W_hh (its parametrization) is evaluated once for the whole
        forward pass, so every step of the sequence sees one dropped weight."""
        return parametrize.cached() if self.weight_drop > 0 else contextlib.nullcontext()

    def _zoneout_sequence(self, cell, x: torch.Tensor, state: tuple[torch.Tensor, ...], mask: torch.Tensor | None):
        """One layer over the sequence with zoneout: ``cell.recur`` step by step, each new
        state mixed with the previous one (:func:`zoneout`); ended sequences keep their state.

        Inputs: x (T, B, D); state, each (B, H); mask (T, B, 1) or None.
        Outputs: outputs (T, B, H), zero past each length; the final state.
        """
        outputs = []
        valid = (None,) * x.shape[0] if mask is None else mask.unbind(0)
        for p_t, valid_t in zip(cell.project(x).unbind(0), valid):  # (B, G*H), (B, 1) or None
            new = zoneout(state, cell.recur(p_t, state), self.zoneout, self.training)
            state = new if valid_t is None else tuple(torch.where(valid_t, n, s) for n, s in zip(new, state))
            outputs.append(state[0] if valid_t is None else state[0] * valid_t)
        return torch.stack(outputs), state  # (T, B, H)

    # ------------------------------------------------ seed's step-by-step loop
    def step_layers(self, x_t: torch.Tensor, layers: Layers, projections: list | None = None,
                    drop_masks: list | None = None, recurrences: list | None = None) -> Layers:
        """The seed article's loop body: one time step of the input through every layer.

        Each layer takes one step, ``cell.recur(cell.project(x_t), state)`` (its ``forward``,
        in the two halves it is defined by), and passes its new h up, through dropout
        between layers in training.

        Inputs: x_t (B, D); layers: per layer its state, (h,) or (h, c), each (B, H);
        projections: optionally, per layer a function that does ``cell.project`` with its
        costs paid in advance (generation folds the embedding into layer 0's and sums the
        biases once); x_t is then what the first of them takes; drop_masks: with locked
        dropout, per layer > 0 the (B, H) mask (scaled) a whole sequence uses
        (:meth:`forward_stepwise` draws them), else a new mask per call. No checks:
        recurrences: optionally, per layer a function that does ``cell.recur``
        (:meth:`~rnnlab.models.cell_base.CellBase.step_recurrence`). No checks: :meth:`step`
        checks what it is given.
        Outputs: the new per-layer states, in the same form; ``[-1][0]`` is the output h_t.
        """
        new_layers = []
        drop = self.layer_dropout is not None and self.training  # no module call per layer and token in eval
        for layer, (layer_cell, state) in enumerate(zip(self.cells, layers)):
            if layer > 0 and drop:
                x_t = self.layer_dropout(x_t) if drop_masks is None else x_t * drop_masks[layer]
            p_t = layer_cell.project(x_t) if projections is None else projections[layer](x_t)  # (B, G*H)
            new = layer_cell.recur(p_t, state) if recurrences is None else recurrences[layer](p_t, state)
            state = new if self.zoneout == 0 else zoneout(state, new, self.zoneout, self.training)
            new_layers.append(state)
            x_t = state[0]  # (B, H)
        return new_layers

    def step(self, x_t: torch.Tensor, h: State | None = None) -> State:
        """Advance every layer by one time step, as in the seed article's loop.

        Inputs: x_t (B, D); h (L, B, H) [or (h, c) for the LSTM] or None for zeros.
        Outputs: the new state of every layer, same form as h; ``h[-1]`` (or ``h[0][-1]``)
        is the output.
        """
        w = self.cells[0].Wxh.weight
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.shape[1] != self.input_size:
            got = checks.shape_str(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
            raise ValueError(f"expected x_t of shape (B, {self.input_size}), got {got}")
        checks.same_dtype_device("x_t", x_t, w)
        shape = (self.num_layers, x_t.shape[0], self.hidden_size)
        if h is None:
            zeros = x_t.new_zeros(shape)
            state = (zeros, zeros) if self.is_lstm else (zeros,)
        else:
            state = self.check_state("h", h, shape)
        with self._one_weight_mask():
            layers = self.step_layers(x_t, [tuple(s[layer] for s in state) for layer in range(self.num_layers)])
        return self.public_state(tuple(torch.stack(parts) for parts in zip(*layers)))  # each (L, B, H)

    def forward_stepwise(self, x: torch.Tensor, h0: State | None = None, return_states: bool = False):
        """The seed's time-major loop over :meth:`step_layers`; same contract as :meth:`forward`
        (without ``lengths``).

        With ``return_states`` it also returns every step's states as they flow: a list over
        the T steps of lists over the L layers of (h,) or (h, c) tuples, each (B, H). They are
        the tensors passed both up to the next layer and on to the next step, so their
        gradients (``retain_grad``) are the total derivatives ∂loss/∂h_t.
        """
        x, state, _, unbatched = self._prepare(x, h0)
        time_dim = 1 if self.batch_first else 0
        layers = [tuple(s[layer] for s in state) for layer in range(self.num_layers)]
        outputs, states = [], []
        masks = None
        if self.locked_dropout and self.layer_dropout is not None and self.training:  # one per sequence
            masks = [None] + [self.layer_dropout(x.new_ones(x.shape[1 - time_dim], self.hidden_size))
                              for _ in range(1, self.num_layers)]  # each (B, H): 0 or 1 / (1 - p)
        with self._one_weight_mask():
            for x_t in x.unbind(time_dim):  # each (B, D)
                layers = self.step_layers(x_t, layers, drop_masks=masks)
                outputs.append(layers[-1][0])
                states.append(layers)
        outputs = torch.stack(outputs, dim=time_dim)  # (B, T, H) or (T, B, H)
        result = self._finish(outputs, tuple(torch.stack(parts) for parts in zip(*layers)), unbatched)
        return (*result, states) if return_states else result

    # ------------------------------------------------ weights from/to torch.nn
    _TORCH = {"rnn_tanh": nn.RNN, "rnn_relu": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> "RNN":
        """Build an :class:`RNN` holding a copy of a ``torch.nn.RNN``/``GRU``/``LSTM``'s weights.

        The module must be unidirectional (and an LSTM without ``proj_size``); the result
        has the same cell, sizes, ``num_layers``, ``dropout``, ``bias``, ``batch_first``,
        dtype and device. PyTorch's gate order (r, z, n for the GRU; i, f, g, o for the
        LSTM) is the cells' own, so the weights copy as they are.
        """
        if isinstance(module, nn.LSTM):
            cell = "lstm"
            if module.proj_size:
                raise ValueError(f"expected a torch.nn.LSTM without projections, got proj_size={module.proj_size}")
        elif isinstance(module, nn.GRU):
            cell = "gru"
        elif isinstance(module, nn.RNN):
            cell = f"rnn_{module.nonlinearity}"
        else:
            raise TypeError(f"expected a torch.nn.RNN, GRU or LSTM, got {type(module).__name__}")
        if module.bidirectional:
            raise ValueError(
                "expected a unidirectional torch.nn module, got bidirectional=True "
                "(use rnnlab.models.BidirectionalRNN, whose layers are stacked differently)"
            )
        ref = module.weight_ih_l0
        with warnings.catch_warnings():  # torch.nn.RNN has already warned about a one-layer dropout
            warnings.simplefilter("ignore", UserWarning)
            rnn = cls(module.input_size, module.hidden_size, module.num_layers, dropout=module.dropout,
                      bias=module.bias, batch_first=module.batch_first, cell=cell)
        rnn.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for mine, theirs in rnn.weight_pairs(module):
                mine.copy_(theirs)
        return rnn

    def to_torch(self) -> nn.RNNBase:
        """Return the matching ``torch.nn.RNN``/``GRU``/``LSTM`` with a copy of these weights, dtype and device."""
        if self.cell not in TORCH_CELLS:
            raise ValueError(f"expected one of the cells torch.nn has ({', '.join(TORCH_CELLS)}), got cell={self.cell!r}")
        ref = self.cells[0].Wxh.weight
        kwargs = {"nonlinearity": self.cell[4:]} if self.cell.startswith("rnn_") else {}
        module = self._TORCH[self.cell](self.input_size, self.hidden_size, self.num_layers, bias=self.bias,
                                        batch_first=self.batch_first, dropout=self.dropout, **kwargs)
        module.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            for mine, theirs in self.weight_pairs(module):
                theirs.copy_(mine)
        return module

    def weight_pairs(self, module: nn.RNNBase):
        """(our parameter, torch's parameter) for every weight and bias, layer by layer (W_hh
        itself, not a weight-dropped copy)."""
        for layer, layer_cell in enumerate(self.cells):
            yield layer_cell.Wxh.weight, getattr(module, f"weight_ih_l{layer}")
            whh = layer_cell.Whh
            yield (whh.parametrizations.weight.original if parametrize.is_parametrized(whh, "weight") else whh.weight,
                   getattr(module, f"weight_hh_l{layer}"))
            if self.bias:
                yield layer_cell.Wxh.bias, getattr(module, f"bias_ih_l{layer}")
                yield layer_cell.Whh.bias, getattr(module, f"bias_hh_l{layer}")

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self.bias:
            s += ", bias=False"
        if not self.batch_first:
            s += ", batch_first=False"
        if self.cell != "rnn_tanh":
            s += f", cell={self.cell!r}"
        if self.cell_options:
            s += f", cell_options={self.cell_options!r}"
        if self.locked_dropout:
            s += ", locked_dropout=True"
        for name in ("weight_drop", "zoneout"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        return s


def _length_mask(lengths, batch: int, time: int, device: torch.device) -> torch.Tensor:
    """Check ``lengths`` (B,) and return the mask (T, B, 1): True at valid steps."""
    if not isinstance(lengths, torch.Tensor) or lengths.dtype != torch.int64:
        got = lengths.dtype if isinstance(lengths, torch.Tensor) else type(lengths).__name__
        raise TypeError(f"expected lengths as an int64 tensor of shape ({batch},), got {got}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"expected lengths of shape ({batch},), got {checks.shape_str(lengths.shape)}")
    low, high = torch.aminmax(lengths)
    if low < 1 or high > time:
        raise ValueError(f"expected lengths in [1, {time}] (T), got values from {int(low)} to {int(high)}")
    lengths = lengths.to(device)
    return (torch.arange(time, device=device)[:, None] < lengths[None, :]).unsqueeze(-1)  # (T, B, 1)


def _recurrent_weight(cell: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(module, attribute) of a cell's recurrent weight, which weight drop acts on: W_hh, or
    IndRNN's element-wise u."""
    if hasattr(cell, "Whh"):
        return cell.Whh, "weight"
    if isinstance(getattr(cell, "u", None), nn.Parameter):
        return cell, "u"
    raise ValueError(f"weight_drop: cell={name!r} has no recurrent weights to drop (its gates read x_t only); "
                     "expected weight_drop=0 with it")
