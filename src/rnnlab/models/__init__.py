"""From-scratch recurrent models: plain ``nn.Module``s with no training code.

The readable definitions: ``cells.py`` (``RNNCell``, the seed's Elman cell, then ``GRUCell``
and ``LSTMCell``), ``rnn.py`` (the multi-layer ``RNN``, with the seed's step-by-step loop),
and one file per architecture: ``SequenceClassifier``, ``SequenceTagger``, ``CharRNN`` and
``BidirectionalRNN``. ``Dropout`` has ``nn.Dropout``'s contract.

Their optimisations live apart, in ``kernels/``: hand-written recurrences, the same loops
compiled (``compiled_loops(False)`` or ``RNNLAB_COMPILED=0`` switches them off), oneDNN's
packed products (``packed_matmul(False)``) and the CPU dropout mask.
"""

from .bidirectional import BidirectionalRNN
from .cells import GRUCell, LSTMCell, RNNCell
from .char_rnn import CharRNN
from .classifier import SequenceClassifier
from .dropout import Dropout
from .kernels import compiled_loops, packed_matmul
from .rnn import RNN
from .tagger import SequenceTagger

__all__ = ["RNNCell", "GRUCell", "LSTMCell", "RNN", "SequenceClassifier", "SequenceTagger", "CharRNN",
           "BidirectionalRNN", "Dropout", "packed_matmul", "compiled_loops"]
