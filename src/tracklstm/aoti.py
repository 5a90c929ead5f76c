"""``python -m tracklstm.aoti``, the name users know: runs ``tracklstm.export.aoti``."""

from tracklstm.export.aoti import main

if __name__ == "__main__":
    raise SystemExit(main())
