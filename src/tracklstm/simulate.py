"""``python -m tracklstm.simulate``, the name users know: runs ``tracklstm.data.simulate``."""

from tracklstm.data.simulate import main

if __name__ == "__main__":
    raise SystemExit(main())
