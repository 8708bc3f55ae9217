"""One federated round and what it is made of: sampling, messages and their checks, transport, aggregation, client fits."""
