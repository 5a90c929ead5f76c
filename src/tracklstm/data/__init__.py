"""Stages 1 to 3: the tracks, from a file or the simulator, to the tensors the training reads.

- ``simulate``: simulated tracks in the training-file format (``python -m tracklstm.simulate``);
- ``download``: the real training file downloaded, or a file on disk used as it is
  (``python -m tracklstm.download``); ``download_record``: what a download leaves beside it;
- ``to_parquet``: track CSV to Parquet with a data-quality summary
  (``python -m tracklstm.to_parquet``); ``csv_blocks``: its checked block reader; ``bounds``: the
  physical limits of a state; ``arrow_columns``: Parquet columns as NumPy;
- ``windows``: Parquet to ``windows.h5``, split by track (``python -m tracklstm.windows``);
  ``checksums``: the checksums of its arrays, written by it and verified by every reader;
- ``challenge``: challenge-format test files, their reader and the challenge score
  (``python -m tracklstm.challenge``).

``mlchallenge2_track3.csv`` is one real track from the challenge's training file.
"""
