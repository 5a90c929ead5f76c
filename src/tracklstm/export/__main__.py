"""``python -m tracklstm.export``: the export stage (``tracklstm.export.formats``)."""

from tracklstm.export.formats import main

raise SystemExit(main())
