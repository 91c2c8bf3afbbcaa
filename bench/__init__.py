"""crest.bench."""
