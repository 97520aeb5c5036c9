"""From-scratch recurrent models: plain ``nn.Module``s with no training code.

``RNNCell`` (Elman, tanh or ReLU), ``GRUCell``, ``LSTMCell`` and ``RNN`` are the core;
``SequenceClassifier``, ``SequenceTagger``, ``CharRNN`` and ``BidirectionalRNN`` are the seed
article's four architectures built on it.
``Dropout`` is ``nn.Dropout``'s contract with a cheaper CPU mask; ``packed_matmul(False)``
switches off oneDNN's packed weights (see ``_matmul``).
"""

from ._matmul import packed_matmul
from .bidirectional import BidirectionalRNN
from .cell import GRUCell, LSTMCell, RNNCell
from .char_rnn import CharRNN
from .classifier import SequenceClassifier
from .dropout import Dropout
from .rnn import RNN
from .tagger import SequenceTagger

__all__ = ["RNNCell", "GRUCell", "LSTMCell", "RNN", "SequenceClassifier", "SequenceTagger", "CharRNN",
           "BidirectionalRNN", "Dropout", "packed_matmul"]
