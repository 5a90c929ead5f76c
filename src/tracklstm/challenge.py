"""``python -m tracklstm.challenge``, the name users know: runs ``tracklstm.data.challenge``."""

from tracklstm.data.challenge import main

if __name__ == "__main__":
    raise SystemExit(main())
