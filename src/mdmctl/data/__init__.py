"""Corpus readers, the built-in corpus, token shards and training batches."""
