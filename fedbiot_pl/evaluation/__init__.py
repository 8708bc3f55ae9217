"""Evaluation: generating on a split, tasks and their scoring, metrics, the code sandbox."""
