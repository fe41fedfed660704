"""Run folders and files: their lifecycle, checkpoints, files written whole, experiment tracking."""
