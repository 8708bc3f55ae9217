"""What a run writes and reads back.

Atomic files, checkpoints and their integrity, CSV logs, exported adapters, plots.
"""
