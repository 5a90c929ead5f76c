"""Stage 4: train the track model on ``windows.h5``.

Faithful by default: the reference model, L1 loss, MSE metric, Adam (1e-4), gradient clipping by
value (1.0), ReduceLROnPlateau (0.85, 5, 1e-5, 1e-6), batch 1256, 100 epochs and early stopping
(patience 20). Every departure is a setting (``model:`` and ``training:`` in config.yaml).

Data path: train and validation tensors that fit in the device's memory are normalized once and
kept there (batches are slices of an on-device ``randperm``); larger data is streamed from the
HDF5 file in shuffled chunks. Metric sums stay on the device; one sync per epoch reads them.

Resumable: after every epoch a checkpoint is written atomically beside the outputs
(``checkpoint.pt``); a rerun with the same settings and data continues from it. On SIGTERM
(Slurm's time limit) or Ctrl-C the current step is finished, the state in the middle of the
epoch saved, and the command exits with 143. A lock refuses a second process on the same run.

Several GPUs: under ``torchrun`` (WORLD_SIZE > 1) training is data-parallel (DDP; NCCL on GPUs,
gloo on CPUs); ``batch_size`` stays the global batch.

Outputs in the run folder: ``weights_best.pt`` and ``weights_last.pt`` (state dicts of the
normalized-units ``TrackRNN``), ``metrics.csv`` (one row per epoch; ``metrics.partial.csv``
while the run goes on) and ``training.json`` (resolved settings, normalization, window length,
data fingerprint, versions, device).

Modules: ``config`` (settings), ``runtime`` (device, signals, processes, RNG), ``data`` (the
windows file and batch sources), ``trainer`` (step, epoch, evaluation), ``checkpoints`` (files
on disk), ``fit`` (the run: ``train``), ``cli`` (the command: ``main``), ``errors``.
"""
