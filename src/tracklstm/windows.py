"""``python -m tracklstm.windows``, the name users know: runs ``tracklstm.data.windows``."""

from tracklstm.data.windows import main

if __name__ == "__main__":
    raise SystemExit(main())
