"""A distilled dataset version on disk: its artifacts (save, load, verify) and the torch loader."""
