"""The cells researchers compare the classics with: minGRU and minLSTM, whose gates read x_t
only, so that a whole sequence is one parallel scan over time; IndRNN, whose recurrence is
element-wise; and the layer-normalised LSTM. Each is written as the classic cells are
(:mod:`rnnlab.models.cells`): ``forward`` is one step from x, ``project`` and ``recur`` the
same step cut in two, ``forward_sequence`` all T steps; :class:`rnnlab.models.RNN` stacks
any of them (``RNN(cell="min_gru")``, or ``model.net.cell=min_gru`` in a config).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import checks
from .cell_base import CellBase, recur_masked
from .kernels import compiled


# ------------------------------------------------------------------ minGRU / minLSTM
SCAN_CHUNK = 256  # steps per log-space scan (the float32 precision of log A_t; see log_space_scan)


def g(x: torch.Tensor) -> torch.Tensor:
    """The minimal cells' candidate activation, positive and continuous: x + 1/2 for x >= 0,
    sigmoid(x) below (Feng et al., 2024, appendix B.3). Positive candidates keep every state
    positive, which the log-space scan needs."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without forming g(x) where it would underflow."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def log_space_scan(log_a: torch.Tensor, log_b: torch.Tensor, h0: torch.Tensor, chunk: int = SCAN_CHUNK) -> torch.Tensor:
    """All T states of the linear recurrence h_t = a_t h_{t-1} + b_t (a_t > 0, b_t >= 0) at once.

    With A_t = a_1 ... a_t, h_t = A_t h_0 + sum_{s <= t} (A_t / A_s) b_s. The sum is computed
    in log space as exp(log A_t + logcumsumexp_s(log b_s - log A_s)) (Heinsen, 2023,
    "Efficient Parallelization of a Ubiquitous Sequential Computation"): a cumulative sum
    and a cumulative log-sum-exp over time, no loop. h_0 enters as the separate term A_t h_0,
    so it may have any sign.

    log A_t grows in magnitude with t, and float32 keeps it only to about 6e-8 of that
    magnitude, which the exponential turns into a relative error of h: 3e-4 after 3000
    steps of a typical minGRU. So the scan runs over ``chunk`` steps at a time, each chunk
    starting from the previous one's last state: the error stays that of ``chunk`` steps,
    for T / chunk iterations of a Python loop.

    Inputs: log_a, log_b (T, B, H) (log_b may be -inf: b_t = 0); h0 (B, H).
    Outputs: h (T, B, H).
    """
    if log_a.shape[0] > chunk:
        states = []
        for a, b in zip(log_a.split(chunk), log_b.split(chunk)):  # each (chunk, B, H)
            states.append(log_space_scan(a, b, h0, chunk))
            h0 = states[-1][-1]
        return torch.cat(states)  # (T, B, H)
    a_star = torch.cumsum(log_a, dim=0)  # (T, B, H): log A_t
    from_inputs = torch.exp(a_star + torch.logcumsumexp(log_b - a_star, dim=0))
    return from_inputs + torch.exp(a_star) * h0


class _MinimalCell(CellBase):
    """What minGRU and minLSTM share: no recurrent weights (``Whh`` is absent), so the whole
    sequence is one linear scan of per-step coefficients computed from x alone."""

    recurrent_matrix = False

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self.check_step(x, (h_prev,))
        return self.recur(self.project(x), (h_prev,))[0]

    def log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log a_t, log b_t), each (T, B, H), of h_t = a_t h_{t-1} + b_t, from projected (T, B, G*H)."""
        raise NotImplementedError

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], mask: torch.Tensor | None = None):
        """Every step of the linear recurrence h_t = a_t h_{t-1} + b_t at once; equal to
        :meth:`recur` step by step.

        Two implementations of the same scan: on the CPU (float32, float64) a compiled loop
        over time that splits the batch rows between the threads and computes the
        coefficients on the fly (:class:`.kernels.compiled.MinScan`; the recurrence is
        element-wise, so each thread runs its rows' T steps alone), and elsewhere, or
        without a compiler, the log-space parallel scan (:func:`log_space_scan`), cumulative
        sums over time that a GPU runs in parallel.

        Inputs: x (T, B, D); state (h0 (B, H),); mask (T, B, 1), True at valid steps, or None.
        Outputs: outputs (T, B, H), zero past each sequence's length; (h (B, H),) at each
        sequence's last valid step.
        """
        projected = self.project(x)  # (T, B, G*H)
        if compiled.usable(projected) is not None:
            outputs = compiled.MinScan.apply(projected, state[0], compiled.step_mask(mask), self.gates)  # (T, B, H)
        else:
            log_a, log_b = self.log_coefficients(projected)  # each (T, B, H)
            if mask is not None:  # an ended sequence keeps its state: a_t = 1, b_t = 0
                log_a = log_a.masked_fill(~mask, 0.0)
                log_b = log_b.masked_fill(~mask, float("-inf"))
            outputs = log_space_scan(log_a, log_b, state[0])  # (T, B, H)
        final = outputs[-1]
        if mask is not None:
            outputs = outputs.masked_fill(~mask, 0.0)
        return outputs, (final,)


class MinGRUCell(_MinimalCell):
    r"""minGRU (Feng et al., 2024, "Were RNNs All We Needed?", arXiv 2410.01201).

    .. math::
        z &= \sigma(W_{xz} x + b_z) \\
        \tilde h &= g(W_{xh} x + b_h), \quad g(v) = v + \tfrac12 \ (v \ge 0),\ \sigma(v) \ (v < 0) \\
        h' &= (1 - z) \odot h + z \odot \tilde h

    The update gate and the candidate read x only, not h: the recurrence is linear in h, so
    a sequence runs as one scan over time (:meth:`forward_sequence`: the paper's log-space
    parallel scan of appendix B, or on the CPU one fused compiled pass), and generation
    step by step with an O(1) state.

    Args:
        input_size: D. hidden_size: H. bias: if ``False`` no biases. Default: ``True``.

    Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H).

    Attributes:
        Wxh: ``nn.Linear(D, 2H)``, the z and candidate maps stacked in that order.
    """

    gates = 2

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 2H); state (h (B, H),). Outputs: (h' (B, H),)."""
        z, candidate = p_t.chunk(2, dim=-1)  # each (B, H)
        z = torch.sigmoid(z)
        return ((1 - z) * state[0] + z * g(candidate),)

    def log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_z, k_h = projected.chunk(2, dim=-1)  # each (T, B, H)
        log_z = -F.softplus(-k_z)  # log sigmoid(k_z)
        return -F.softplus(k_z), log_z + log_g(k_h)  # log(1 - z), log(z g(k_h))


class MinLSTMCell(_MinimalCell):
    r"""minLSTM (Feng et al., 2024), with the paper's normalised gates (length independence).

    .. math::
        f &= \sigma(W_{xf} x + b_f), \quad i = \sigma(W_{xi} x + b_i) \\
        f' &= \frac{f}{f + i}, \quad i' = \frac{i}{f + i} \\
        h' &= f' \odot h + i' \odot g(W_{xh} x + b_h)

    No cell state and no output gate: h is the state (one tensor, as for the GRU).

    Args and shapes as :class:`MinGRUCell`.

    Attributes:
        Wxh: ``nn.Linear(D, 3H)``, the f, i and candidate maps stacked in that order.
    """

    gates = 3

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 3H); state (h (B, H),). Outputs: (h' (B, H),)."""
        f, i, candidate = p_t.chunk(3, dim=-1)  # each (B, H)
        f, i = torch.sigmoid(f), torch.sigmoid(i)
        total = f + i
        return ((f / total) * state[0] + (i / total) * g(candidate),)

    def log_coefficients(self, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k_f, k_i, k_h = projected.chunk(3, dim=-1)  # each (T, B, H)
        # log f' = log f - log(f + i) = -softplus(log i - log f), with log sigmoid(k) = -softplus(-k)
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i - log f
        return -F.softplus(diff), -F.softplus(-diff) + log_g(k_h)


# ------------------------------------------------------------------ IndRNN
class IndRNNCell(CellBase):
    r"""Independently recurrent cell (Li et al., 2018, "Independently Recurrent Neural Network
    (IndRNN): Building A Longer and Deeper RNN", CVPR).

    .. math::
        h' = \mathrm{ReLU}(W_{xh} x + b + u \odot h)

    Each unit reads only its own previous value, through one recurrent weight u_j. Over T
    steps the gradient reaching h_{t-T} from unit j is scaled by u_j^T (times the ReLU's 0/1
    slopes), so the paper bounds |u_j| <= 2^{1/T} for the T steps it must bridge:
    :meth:`constrain_` clips u to [-u_max, u_max], u_max = ``magnitude ** (1 / max_steps)``,
    after every optimiser step (as the paper's code does), and u starts uniform in [0, u_max].

    Args:
        input_size: D. hidden_size: H. bias: if ``False`` no bias. Default: ``True``.
        max_steps: the number of steps T the recurrence must carry a gradient over (the
            training sequences' length). Default: 1000.
        magnitude: the largest factor |u_j|^T allowed over ``max_steps`` steps. Default: 2.0.

    Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H).

    Attributes:
        Wxh: ``nn.Linear(D, H)``. u: the recurrent weights, (H,).
    """

    recurrent_matrix = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, max_steps: int = 1000,
                 magnitude: float = 2.0):
        self.max_steps = checks.positive_int("max_steps", max_steps)
        if not isinstance(magnitude, (int, float)) or isinstance(magnitude, bool) or not magnitude > 0:
            raise ValueError(f"expected magnitude > 0, got {magnitude!r}")
        self.magnitude = float(magnitude)
        self.u_max = self.magnitude ** (1.0 / self.max_steps)
        super().__init__(input_size, hidden_size, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if not hasattr(self, "u"):
            self.u = nn.Parameter(torch.empty(self.hidden_size, dtype=self.Wxh.weight.dtype))
        with torch.no_grad():
            self.u.uniform_(0.0, self.u_max)

    def constrain_(self) -> None:
        u = self.parametrizations.u.original if parametrize.is_parametrized(self, "u") else self.u  # weight drop
        with torch.no_grad():
            u.clamp_(-self.u_max, self.u_max)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """Inputs: x (B, D), h_prev (B, H). Outputs: h (B, H)."""
        self.check_step(x, (h_prev,))
        return self.recur(self.project(x), (h_prev,))[0]

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor]) -> tuple[torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, H); state (h (B, H),). Outputs: (h' (B, H),)."""
        return (torch.relu(torch.addcmul(p_t, self.u, state[0])),)

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor], mask: torch.Tensor | None = None):
        """:meth:`recur` over every step of x (T, B, D); outputs and mask as :meth:`RNNCell.forward_sequence`.

        On the CPU (float32, float64) the time loop runs compiled, forward and backward
        (:class:`.kernels.compiled.IndRNNScan`); elsewhere, or without a compiler, the loop below.
        """
        projected = self.project(x)  # (T, B, H): one product for all steps
        if compiled.usable(projected) is not None:
            outputs = compiled.IndRNNScan.apply(projected, state[0], self.u, compiled.step_mask(mask))  # (T, B, H)
            final = outputs[-1]  # an ended row kept its state: its last valid step's
            if mask is not None:
                outputs = outputs.masked_fill(~mask, 0.0)
            return outputs, (final,)
        if mask is not None:
            return recur_masked(self, projected, state, mask)
        h, outputs = state[0], []
        for p_t in projected.unbind(0):  # each (B, H): one fused multiply-add and a ReLU per step
            h = torch.relu(torch.addcmul(p_t, self.u, h))
            outputs.append(h)
        return torch.stack(outputs), (h,)  # (T, B, H)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_steps={self.max_steps}, magnitude={self.magnitude}"


# ------------------------------------------------------------------ layer-normalised LSTM
class LayerNormLSTMCell(CellBase):
    r"""An LSTM with layer normalisation (Ba et al., 2016, "Layer Normalization", eq. 20-22).

    .. math::
        (i, f, g, o)\ \text{stacked} &= \mathrm{LN}(W_{hh} h; \alpha_1) + \mathrm{LN}(W_{xh} x; \alpha_2, \beta) \\
        c' &= \sigma(f) \odot c + \sigma(i) \odot \tanh(g) \\
        h' &= \sigma(o) \odot \tanh(\mathrm{LN}(c'; \alpha_3, \beta_3))

    Each LN normalises over the 4H stacked pre-activations (or the H cell units) of one
    example at one step, as in the paper; the two products carry no bias of their own (β,
    the one bias of the sum, is the input LN's shift). The gates are stacked in PyTorch's
    order i, f, g, o; the forget gate's bias starts at 1.

    Args:
        input_size: D. hidden_size: H. bias: if ``False``, no shifts β, β_3. Default: ``True``.

    Inputs: x (B, D), state (h_prev, c_prev), each (B, H). Outputs: (h, c), each (B, H).

    Attributes:
        Wxh: ``nn.Linear(D, 4H, bias=False)``. Whh: ``nn.Linear(H, 4H, bias=False)``.
        ln_x, ln_h: ``nn.LayerNorm(4H)`` (ln_h without shift). ln_c: ``nn.LayerNorm(H)``.
    """

    gates = 4
    state_size = 2

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__(input_size, hidden_size, bias=False)  # the products: no biases
        self.bias = bool(bias)
        H = self.hidden_size
        self.ln_x = nn.LayerNorm(4 * H, bias=self.bias)
        self.ln_h = nn.LayerNorm(4 * H, bias=False)
        self.ln_c = nn.LayerNorm(H, bias=self.bias)
        if self.bias:
            with torch.no_grad():
                self.ln_x.bias[H:2 * H].fill_(1.0)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "ln_x"):
            for norm in (self.ln_x, self.ln_h, self.ln_c):
                norm.reset_parameters()
            if self.bias:
                with torch.no_grad():
                    self.ln_x.bias[self.hidden_size:2 * self.hidden_size].fill_(1.0)

    def input_bias(self) -> torch.Tensor | None:
        return None  # β is inside ln_x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """LN(W_xh x; α_2, β), hoisted out of the time loop. Inputs: x (..., D). Outputs: (..., 4H)."""
        return self.ln_x(F.linear(x, self.Wxh.weight))

    def step_projection(self):
        return self.project

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """Inputs: x (B, D), state (h_prev (B, H), c_prev (B, H)). Outputs: (h, c), each (B, H)."""
        self.check_step(x, state)
        return self.recur(self.project(x), state)

    def recur(self, p_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the projected input. Inputs: p_t (B, 4H); state (h, c), each (B, H). Outputs: (h', c')."""
        h, c = state
        i, f, g_, o = (p_t + self.ln_h(F.linear(h, self.Whh.weight))).chunk(4, dim=-1)  # each (B, H)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g_)
        return torch.sigmoid(o) * torch.tanh(self.ln_c(c)), c

    def forward_sequence(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
                         mask: torch.Tensor | None = None):
        """:meth:`recur` over every step of x (T, B, D); as :meth:`RNNCell.forward_sequence`, with state (h, c)."""
        projected = self.project(x)  # (T, B, 4H): one product and one normalisation for all steps
        if mask is not None:
            return recur_masked(self, projected, state, mask)
        outputs = []
        for p_t in projected.unbind(0):  # each (B, 4H)
            state = self.recur(p_t, state)
            outputs.append(state[0])
        return torch.stack(outputs), state  # (T, B, H)
