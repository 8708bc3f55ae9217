"""One federated round and what it is made of.

Sampling, messages and their checks, transport, aggregation, client fits.
"""
