"""From-scratch recurrent models: plain ``nn.Module``s with no training code.

``RNNCell`` and ``RNN`` are the core; ``SequenceClassifier``, ``SequenceTagger``,
``CharRNN`` and ``BidirectionalRNN`` are the seed article's four architectures built on it.
"""

from .bidirectional import BidirectionalRNN
from .cell import RNNCell
from .char_rnn import CharRNN
from .classifier import SequenceClassifier
from .rnn import RNN
from .tagger import SequenceTagger

__all__ = ["RNNCell", "RNN", "SequenceClassifier", "SequenceTagger", "CharRNN", "BidirectionalRNN"]
