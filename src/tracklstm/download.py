"""``python -m tracklstm.download``, the name users know: runs ``tracklstm.data.download``."""

from tracklstm.data.download import main

if __name__ == "__main__":
    raise SystemExit(main())
