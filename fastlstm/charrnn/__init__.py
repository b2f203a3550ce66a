"""Character-level RNN on any UTF-8 text (the lesson's Anna Karenina model), on FastLSTM or nn.LSTM.

    python -m fastlstm.charrnn train --text anna.txt --out runs/anna
    python -m fastlstm.charrnn sample --checkpoint runs/anna --prime Anna --length 500 --seed 1
    torchrun --nproc_per_node 2 -m fastlstm.charrnn train --text anna.txt --out runs/anna-ddp
"""
from .data import Vocab, batch_rows, get_batches, load_text, split
from .errors import CharRNNError
from .model import CELLS, DTYPES, Cell, CharRNN, detach, make_rnn
from .sample import load_model, probabilities, sample
from .train import DEFAULTS, load_checkpoint, train

__all__ = ["Vocab", "batch_rows", "get_batches", "load_text", "split", "CELLS", "DTYPES", "Cell", "CharRNN", "detach",
           "make_rnn", "load_model", "probabilities", "sample", "DEFAULTS", "load_checkpoint", "train",
           "CharRNNError"]
