"""The registry: SQL tables of streams, blocks, jobs, dataset versions and tokens, one query module each."""
