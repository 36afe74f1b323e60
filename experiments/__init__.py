"""Entry points: the quickstart, training, benchmarks and experiments built on gaf_optax."""
