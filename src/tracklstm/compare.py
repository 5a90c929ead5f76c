"""``python -m tracklstm.compare``, the name users know: runs ``tracklstm.evaluate.compare``."""

from tracklstm.evaluate.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
