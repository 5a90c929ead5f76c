"""``python -m tracklstm.train`` (also under ``torchrun``/``torch.distributed.run -m``)."""

from tracklstm.train.cli import main

raise SystemExit(main())
