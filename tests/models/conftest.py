"""Every model test runs twice: with the compiled time loops (kernels/compiled.py) and with the
Python ones (kernels/recurrences.py and the readable masked loop), which must give the same
results; on a machine where the compiled loops cannot be built both runs take the Python ones."""

import pytest

from rnnlab.models.kernels import compiled
from rnnlab.models.kernels.compiled import compiled_loops


@pytest.fixture(autouse=True, params=["compiled", "python"])
def time_loops(request):
    with compiled_loops(request.param == "compiled"):
        yield request.param


@pytest.fixture
def extension_calls(monkeypatch):
    """The names of the compiled extension's functions looked up while the test runs (the
    extension replaced by a spy that records each lookup and hands on the real function)."""
    calls = []
    real = compiled.extension()

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(real, name)

    if real is not None:
        monkeypatch.setattr(compiled, "_extension", Spy())
    return calls
