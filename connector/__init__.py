"""gotham-connector: Palantir Gotham's observation stream, landed as Parquet exactly once."""

__version__ = "0.1.0"
