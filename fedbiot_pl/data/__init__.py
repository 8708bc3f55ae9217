"""Instruction data: sources, row checks, cached tokenisation, prompts, client partitions and their report."""
