"""crest.v1: generated from coordinator.proto (see proto/generate.py)."""
