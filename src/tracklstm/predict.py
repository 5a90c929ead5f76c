"""``python -m tracklstm.predict``, the name users know: runs ``tracklstm.evaluate.predict``."""

from tracklstm.evaluate.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
