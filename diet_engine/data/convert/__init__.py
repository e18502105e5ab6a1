"""Converters from raw logs to a stream directory (schema.json + one Parquet file per split)."""
