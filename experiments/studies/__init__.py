"""The CPU-scale studies: each is `python -m experiments.studies.NAME`.

Every study trains through gaf_optax.training.Trainer; none imports another.
"""
