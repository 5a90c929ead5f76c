"""``python -m tracklstm.evaluate [quality] ...``: the ``tracklstm evaluate`` command."""

from tracklstm.evaluate.cli import main

raise SystemExit(main())
