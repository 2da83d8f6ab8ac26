"""tfds builder over local text files (the built-in corpus and the user's CSV/TSV/JSONL)."""
