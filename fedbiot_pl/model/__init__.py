"""The model side.

Views of one set of weights (full, compressed, AdapFu), layer layouts, layer capture, losses, locating a model.
"""
