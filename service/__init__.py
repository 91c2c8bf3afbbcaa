"""crest.service."""
