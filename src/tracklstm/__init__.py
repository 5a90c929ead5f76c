"""tracklstm: the GlueX charged-track LSTM pipeline."""

__version__ = "0.1.0"
