"""The compiled time loops (kernels/compiled.py): equal to the Python loops and the readable
masked loop in float64, with and without lengths, bias and h0, gradients included; they keep
nothing for a backward under no_grad; they are built where a compiler is, and fall back with
one log line where none is."""

import logging
import shutil
from pathlib import Path

import pytest
import torch

from helpers import TORCH_RNNS, flat_state
from rnnlab.models import RNN
from rnnlab.models.kernels import compiled, recurrences
from rnnlab.models.kernels.compiled import compiled_loops

needs_build = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                 reason="no C++ compiler on this machine")


def _forward_backward(rnn, x, h0, lengths):
    x = x.clone().requires_grad_()
    h0 = None if h0 is None else [s.clone().requires_grad_() for s in h0]
    out, h_n = rnn(x, None if h0 is None else (tuple(h0) if len(h0) == 2 else h0[0]), lengths=lengths)
    weights = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
    loss = (out * weights).sum() + sum((s * s).sum() for s in flat_state(h_n))
    inputs = [x, *(h0 or []), *rnn.parameters()]
    return [out, *flat_state(h_n), *torch.autograd.grad(loss, inputs)]


@needs_build
def test_the_compiled_loops_are_built_where_a_compiler_is():
    with compiled_loops(True):
        assert compiled.extension() is not None


@pytest.mark.parametrize("cell", list(TORCH_RNNS))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_compiled_loops_equal_the_python_loops_in_float64(cell, bias, with_h0, with_lengths, time_loops):
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("compares the compiled loops with the Python ones")
    torch.manual_seed(0)
    rnn = RNN(5, 7, num_layers=2, cell=cell, bias=bias).double()
    x = torch.randn(4, 9, 5, dtype=torch.float64)
    h0 = [torch.randn(2, 4, 7, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)] if with_h0 else None
    lengths = torch.tensor([9, 1, 4, 6]) if with_lengths else None
    ours = _forward_backward(rnn, x, h0, lengths)
    with compiled_loops(False):
        reference = _forward_backward(rnn, x, h0, lengths)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_inference_projects_in_chunks_and_equals_the_python_loops(cell, bias, with_h0, with_lengths, time_loops,
                                                                   extension_calls):
    """Under no_grad the GRU and LSTM layers run one compiled call that projects the input
    CHUNK_STEPS steps at a time (T = 37: two full chunks and a partial one), and it equals
    the Python loops in float64."""
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("compares the compiled loops with the Python ones")
    torch.manual_seed(0)
    rnn = RNN(5, 7, num_layers=2, cell=cell, bias=bias, batch_first=True).double()
    x = torch.randn(4, 37, 5, dtype=torch.float64)
    h0 = tuple(torch.randn(2, 4, 7, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)) if with_h0 else None
    h0 = h0[0] if h0 is not None and len(h0) == 1 else h0
    lengths = torch.tensor([37, 1, 17, 30]) if with_lengths else None
    with torch.no_grad():
        out, h_n = rnn(x, h0, lengths=lengths)
    assert extension_calls == [f"{cell}_inference"] * 2  # one call per layer, nothing else
    with compiled_loops(False), torch.no_grad():
        ref_out, ref_h_n = rnn(x, h0, lengths=lengths)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for a, b in zip(flat_state(h_n), flat_state(ref_h_n), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


@pytest.fixture
def two_threads():
    """Two torch threads for the test (the suite runs on one), so that parallel regions split."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("batch, hidden", [(13, 84), (7, 190)])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_the_fused_lstm_step_equals_the_python_loop_however_the_threads_share_it(batch, hidden, with_lengths,
                                                                                   time_loops, two_threads):
    """The LSTM's fused step tiles the batch by up to six rows and the units by one vector's
    width (8 in float64 with AVX-512), and shares a layer between the threads by batch rows
    where W_hh is small (13 x 84) or by units at every step (7 x 190). Both, with a short last
    tile of rows and a partial last panel of units, equal the Python loop in float64: the
    training forward and backward, and inference, where the first layer (D 5 <= H / 4)
    multiplies x_t by W_xh inside the step and the second projects its input in chunks of 16
    steps (T = 20: one chunk and part of another)."""
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("compares the compiled loops with the Python ones")
    assert torch.get_num_threads() > 1 and batch * 4 * hidden * hidden >= 2**18  # the parallel paths run
    torch.manual_seed(0)
    rnn = RNN(5, hidden, num_layers=2, cell="lstm").double()
    x = torch.randn(batch, 20, 5, dtype=torch.float64)
    h0 = [torch.randn(2, batch, hidden, dtype=torch.float64) for _ in range(2)]
    lengths = torch.randint(1, 21, (batch,)) if with_lengths else None
    ours = _forward_backward(rnn, x, h0, lengths)
    with torch.no_grad():
        inferred, _ = rnn(x, tuple(h0), lengths=lengths)
    with compiled_loops(False):
        reference = _forward_backward(rnn, x, h0, lengths)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(inferred, reference[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("batch, hidden", [(13, 150), (7, 400)])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_the_fused_elman_step_equals_the_python_loop_however_the_threads_share_it(batch, hidden, cell, with_lengths,
                                                                                    time_loops, two_threads):
    """The Elman forward's fused step tiles the batch by up to six rows and the units by four
    vectors (32 in float64 with AVX-512), and shares a layer between the threads by batch rows
    where W_hh fits a core's cache (13 x 150) or by units at every step (7 x 400). Both, with
    a short last tile of rows and a partial last panel of units, equal the Python loop in
    float64, in training (forward and backward) and in inference."""
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("compares the compiled loops with the Python ones")
    assert torch.get_num_threads() > 1 and batch * hidden * hidden >= 2**18  # the parallel paths run
    torch.manual_seed(0)
    rnn = RNN(5, hidden, num_layers=2, cell=cell).double()
    x = torch.randn(batch, 20, 5, dtype=torch.float64)
    h0 = torch.randn(2, batch, hidden, dtype=torch.float64)
    lengths = torch.randint(1, 21, (batch,)) if with_lengths else None
    ours = _forward_backward(rnn, x, [h0], lengths)
    with torch.no_grad():
        inferred, _ = rnn(x, h0, lengths=lengths)
    with compiled_loops(False):
        reference = _forward_backward(rnn, x, [h0], lengths)
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(inferred, reference[0], atol=1e-10, rtol=0)


def test_the_fused_lstm_step_equals_torch_nn_in_float32(two_threads):
    """In float32 the fused LSTM step's activations are the vectorised polynomial ones (float64
    uses std::exp): a 2-layer LSTM of 64 units, whose first layer (D 16 <= H / 4) projects
    its input inside the step and whose second projects in chunks, equals torch.nn.LSTM at
    its float32 tolerance in inference and in training, gradients included."""
    torch.manual_seed(5)
    ref = torch.nn.LSTM(16, 64, num_layers=2, batch_first=True)
    rnn = RNN.from_torch(ref)
    x = torch.randn(13, 40, 16)
    with torch.no_grad():
        out, (h_n, c_n) = rnn(x)
        ref_out, (ref_h, ref_c) = ref(x)
    for a, b in ((out, ref_out), (h_n, ref_h), (c_n, ref_c)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    input_grads = []
    for module in (rnn, ref):
        xi = x.clone().requires_grad_()
        (module(xi)[0] * torch.linspace(-1, 1, 64)).sum().backward()
        input_grads.append(xi.grad)
    torch.testing.assert_close(*input_grads, atol=1e-4, rtol=1e-4)
    for ours, theirs in rnn.weight_pairs(ref):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-4, rtol=1e-4)


def test_the_compiled_loops_run_on_torchs_threads_and_openmp_runtime(two_threads):
    """Built with OpenMP where PyTorch's threads are GNU OpenMP's, the loops' parallel regions
    use as many threads as torch.get_num_threads(), and they call the libgomp PyTorch ships
    and has loaded, not a second runtime with threads of its own (other packages may load
    their own, under other names: scikit-learn does)."""
    if compiled.extension() is None or not compiled._openmp_flags():
        pytest.skip("no compiled loops, or PyTorch's threads are not GNU OpenMP's here")
    assert compiled.extension().threads_used() == torch.get_num_threads() > 1
    shipped = {p.resolve() for p in (Path(torch.__file__).parent / "lib").glob("libgomp*.so*")}
    if not shipped:
        pytest.skip("this PyTorch build ships no libgomp of its own")
    assert Path(compiled.extension().openmp_library()).resolve() in shipped


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("packed", [True, False])
def test_inference_equals_torch_nn_in_float32_with_and_without_packed_products(cell, packed):
    """The float32 inference call, its chunk projections and step products through oneDNN's
    packed weights or through addmm, equals torch.nn at its float32 tolerance. The sizes
    make every layer's T*B*numel(W_xh) reach MIN_PACKED_LINEAR_MACS, so with packing on the
    chunk projections do take the packed product."""
    from rnnlab.models import packed_matmul
    from rnnlab.models.kernels.matmul import MIN_PACKED_LINEAR_MACS

    torch.manual_seed(2)
    ref = TORCH_RNNS[cell](64, 64, num_layers=2, batch_first=True)
    rnn = RNN.from_torch(ref)
    x = torch.randn(64, 48, 64)
    assert 48 * 64 * rnn.cells[0].Wxh.weight.numel() >= MIN_PACKED_LINEAR_MACS
    with torch.no_grad(), packed_matmul(packed):
        out, h_n = rnn(x)
        ref_out, ref_h_n = ref(x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-4)
    for a, b in zip(flat_state(h_n), flat_state(ref_h_n), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gru_generation_steps_run_one_compiled_call_per_layer_and_equal_the_forward(time_loops, extension_calls):
    """CharRNN's decoder advances each GRU layer with one compiled call per token (the
    compiled loop over one step), and its logits equal the whole-sequence forward's."""
    from rnnlab.models import CharRNN

    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("the compiled step needs the compiled loops")
    torch.manual_seed(3)
    lm = CharRNN(12, 8, 16, num_layers=2, cell="gru").eval()
    idx = torch.randint(0, 12, (3, 6))
    with torch.no_grad():
        full, _ = lm(idx)
        _, h = lm(idx[:, :1])
        step = lm.decoder()
        extension_calls.clear()
        layers = [(h[layer],) for layer in range(2)]
        for t in range(1, 6):
            logits, layers = step(idx[:, t], layers)
            torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5)
    assert extension_calls == ["gru_forward"] * 2 * 5


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_without_a_gradient_to_come_only_the_states_are_kept(cell):
    """Under no_grad the GRU and LSTM loops keep no gates or cells for a backward, and give
    the same results."""
    torch.manual_seed(1)
    rnn = RNN(3, 6, num_layers=1, cell=cell)
    x = torch.randn(5, 8, 3)
    with torch.no_grad():
        out, h_n = rnn(x)
    again, h_again = rnn(x)
    torch.testing.assert_close(out, again, atol=0, rtol=0)
    for a, b in zip(flat_state(h_n), flat_state(h_again)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_the_switch_and_the_environment_variable_turn_the_compiled_loops_off(monkeypatch):
    with compiled_loops(False):
        assert compiled.extension() is None
    monkeypatch.setenv("RNNLAB_COMPILED", "0")
    monkeypatch.setattr(compiled, "_tried", False)
    monkeypatch.setattr(compiled, "_build", lambda: pytest.fail("RNNLAB_COMPILED=0 must not build"))
    assert compiled.extension() is None


def test_without_a_compiler_one_line_says_so_and_the_python_loops_run(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found\nmore detail")

    monkeypatch.setattr(compiled, "_tried", False)
    monkeypatch.setattr(compiled, "_extension", None)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    rnn = RNN(3, 4, num_layers=1, cell="lstm")
    x = torch.randn(2, 5, 3)
    with compiled_loops(True), caplog.at_level(logging.WARNING, logger="rnnlab.models.kernels.compiled"):
        out, _ = rnn(x)
        rnn(x)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["rnnlab: the compiled recurrences could not be built (Error building extension: c++: command "
                     "not found); the Python loops run instead (same results, slower). RNNLAB_COMPILED=0 skips the "
                     "attempt."]
    with compiled_loops(False):
        torch.testing.assert_close(rnn(x)[0], out, atol=0, rtol=0)


def test_a_lock_file_left_by_a_killed_build_is_cleared_under_a_lock_the_kernel_releases(tmp_path, monkeypatch):
    # torch's build lock is a plain file: a process killed while building or loading (kill -9
    # of a run that had just started) leaves it, and every later build waits for it forever.
    import subprocess
    import sys

    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    name, _ = compiled._flags()
    (tmp_path / name).mkdir()
    (tmp_path / name / "lock").touch()
    seen = {}

    def fake_load(name, sources, build_directory, **kwargs):
        seen["stale lock"] = (tmp_path / name / "lock").exists()
        seen["directory"] = build_directory
        probe = ("import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / name / "rnnlab.lock")], capture_output=True)
        seen["held by this process"] = held.returncode != 0
        return "the module"

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert compiled._build() == "the module"
    assert seen == {"stale lock": False, "directory": str(tmp_path / name), "held by this process": True}
    free = subprocess.run([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'w'); "
                           "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / name / "rnnlab.lock")])
    assert free.returncode == 0  # released after the build


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_under_bf16_autocast_the_gated_cells_run_a_compiled_loop_with_a_float32_state(cell, bias, with_lengths,
                                                                                      time_loops, extension_calls,
                                                                                      monkeypatch):
    """bfloat16 autocast (trainer.precision=bf16-mixed) runs the GRU's and LSTM's compiled
    mixed loops, forward and backward, their products in bfloat16 and their state in float32:
    the results differ from float32's by bfloat16's rounding, not float32's, and lie closer to
    float64 than the Python loop's, which autocast runs wholly in bfloat16, state included."""
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("the mixed-precision loop is compiled")
    monkeypatch.setattr(recurrences, "MIN_MIXED_STEP_MACS", 0)  # these small products too
    monkeypatch.setattr(compiled, "native_bfloat16", lambda: True)
    torch.manual_seed(0)
    rnn = RNN(16, 64, num_layers=2, cell=cell, bias=bias).double()
    x = torch.randn(8, 64, 16, dtype=torch.float64)
    h0 = [torch.randn(2, 8, 64, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)]
    lengths = torch.tensor([64, 1, 40, 63, 64, 17, 5, 64]) if with_lengths else None
    reference = _forward_backward(rnn, x, h0, lengths)
    rnn.float()

    h0_32 = [s.float() for s in h0]

    def errors(autocast: bool) -> list[float]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results = _forward_backward(rnn, x.float(), h0_32, lengths)
        return [((got.double() - want).norm() / want.norm()).item() for got, want in zip(results, reference)]

    float32 = errors(autocast=False)
    extension_calls.clear()
    mixed = errors(autocast=True)
    loop = "gru" if cell == "gru" else "lstm_mixed"
    assert extension_calls.count(f"{loop}_forward") == 2 and extension_calls.count(f"{loop}_backward") == 2
    with compiled_loops(False):
        bf16 = errors(autocast=True)
    assert max(float32) < 1e-5
    # outputs, h_n (and c_n), then the gradients of x, h0 (and c0) and the weights: every one
    # rounded as bfloat16 rounds (8 bits of mantissa, about 4e-3), none silently in float32.
    assert all(1e-4 < e < 0.03 for e in mixed), mixed
    # The state carried in float32 keeps the outputs and final states nearer float64 than bf16's.
    states = 1 + len(h0)
    assert all(m < b for m, b in zip(mixed[:states], bf16[:states])), (mixed[:states], bf16[:states])
    # Evaluation (no_grad, nothing kept for a backward) runs the same loop to the same bits.
    state = tuple(h0_32) if cell == "lstm" else h0_32[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = rnn(x.float(), state, lengths=lengths)
        with torch.no_grad():
            out_eval, h_n_eval = rnn(x.float(), state, lengths=lengths)
    for a, b in zip([out, *flat_state(h_n)], [out_eval, *flat_state(h_n_eval)], strict=True):
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)


def test_under_bf16_autocast_the_loop_is_chosen_by_cell_product_size_and_cpu(monkeypatch):
    """The GRU's and LSTM's steps run mixed from MIN_MIXED_STEP_MACS multiply-adds on a CPU
    with native bfloat16, the Elman cell's the Python loop in bfloat16; smaller products and
    other CPUs run the float32 loop on the cast input; outside CPU bfloat16 autocast none of
    these applies."""
    if compiled.extension() is None:
        pytest.skip("needs the compiled loops")
    monkeypatch.setattr(compiled, "native_bfloat16", lambda: True)
    small, large = torch.zeros(64, 128), torch.zeros(64, 256)  # h0 (B, H): 3.1 and 12.6 million for the GRU
    p = torch.zeros(4, 4)
    assert recurrences.autocast_loop(p, large, 3) is None  # no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert [recurrences.autocast_loop(p, h, g) for h in (small, large) for g in (1, 3, 4)] == [
            "float32", "float32", "mixed", None, "mixed", "mixed"]  # the Elman cell: the bfloat16 Python loop
        monkeypatch.setattr(compiled, "native_bfloat16", lambda: False)
        assert recurrences.autocast_loop(p, large, 4) == "float32"
    with torch.autocast("cpu", dtype=torch.float16):
        assert recurrences.autocast_loop(p, large, 4) is None


@pytest.mark.parametrize("cell, loop", [("rnn_tanh", "elman"), ("lstm", "lstm")])
@pytest.mark.parametrize("with_lengths", [True, False])
def test_under_bf16_autocast_small_products_run_the_float32_loop(cell, loop, with_lengths, time_loops,
                                                                   extension_calls):
    """Where the products are too small for bfloat16 to pay, autocast's bfloat16 projections
    feed the float32 compiled loop: float32 outputs, within bfloat16's rounding of float32's."""
    if time_loops != "compiled" or compiled.extension() is None:
        pytest.skip("the float32 loop is compiled")
    torch.manual_seed(0)
    rnn = RNN(6, 16, num_layers=2, cell=cell)
    x = torch.randn(4, 12, 6)
    lengths = torch.tensor([12, 3, 7, 1]) if with_lengths else None
    reference = _forward_backward(rnn, x, None, lengths)
    extension_calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = _forward_backward(rnn, x, None, lengths)
    assert extension_calls.count(f"{loop}_forward") == 2 and extension_calls.count(f"{loop}_backward") == 2
    assert results[0].dtype == torch.float32
    for got, want in zip(results, reference, strict=True):
        assert 0 < ((got.float() - want).norm() / want.norm()).item() < 0.03
