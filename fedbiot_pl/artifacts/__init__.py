"""What a run writes and reads back: atomic files, checkpoints and their integrity, CSV logs, exported adapters, plots."""
