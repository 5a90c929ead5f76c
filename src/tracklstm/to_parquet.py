"""``python -m tracklstm.to_parquet``, the name users know: runs ``tracklstm.data.to_parquet``."""

from tracklstm.data.to_parquet import main

if __name__ == "__main__":
    raise SystemExit(main())
