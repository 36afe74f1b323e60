"""Entry points: demos, benchmarks and experiments built on gaf_optax."""
