"""Stage 5: the trained model as files a C++ or Python host loads, each checked against it.

- ``formats``: the export stage (``python -m tracklstm.export``): TorchScript, ONNX and
  torch.export files, all or none;
- ``aoti``: AOTInductor packages (``python -m tracklstm.aoti``), for the CPU or a CUDA GPU;
- ``module``: the module every file holds (the run's model in physical units and its metadata);
- ``parity``: the one parity check every file passes before it is kept;
- ``loading``: the one loader of every exported format, and the batched predictor;
- ``tensor_file``: the C++ host's binary tensor files;
- ``reproducible``: the same run gives the same bytes in any process and any project folder.
"""
