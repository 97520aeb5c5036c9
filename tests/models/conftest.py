"""Every model test runs twice: with the compiled time loops (kernels/compiled.py) and with the
Python ones (kernels/recurrences.py and the readable masked loop), which must give the same
results; on a machine where the compiled loops cannot be built both runs take the Python ones."""

import pytest

from rnnlab.models.kernels.compiled import compiled_loops


@pytest.fixture(autouse=True, params=["compiled", "python"])
def time_loops(request):
    with compiled_loops(request.param == "compiled"):
        yield request.param
