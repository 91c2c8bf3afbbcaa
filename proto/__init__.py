"""The contract between trainers and the coordinator."""
