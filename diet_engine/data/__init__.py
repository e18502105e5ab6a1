"""Stream data: the schema, field hashing, blocks read in record batches, the synthetic set, converters."""
