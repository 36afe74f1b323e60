"""The CPU-scale studies: each is `python -m experiments.studies.NAME`.

Every study trains through gaf_optax.training.Trainer; none imports another.
``TITLES`` numbers them once: each study's results.md starts with its title,
and docs/guides/studies.md lists them in this order.
"""

TITLES = {
    "gaf_cifar": "Study 1: GAF on CIFAR-10, small ResNet, all baselines",
    "vanishing": ("Study 2: vanishing gradients, SGD vs GAF vs GAAF vs ANAct "
                  "vs amplification"),
    "gaaf": "Study 3: base vs dropout vs GAAF, tanh MLPs on digits",
    "anact": "Study 4: ANAct (NSwish) vs Swish",
    "amplification": "Study 5: gradient amplification over a learning-rate sweep",
    "theory": ("Study 6: GAF theory checks, ill-conditioned quadratic and "
               "saddle escape"),
    "anact_robustness": "Study 7: ANAct's rules, and how robust they are",
    "activations_digits": "Study 8: GAAF and ANAct on deep MLPs (digits)",
}


def title(study: str, epochs: int | None = None) -> str:
  """The results page's title; ``epochs`` tells runs of one study apart."""
  text = TITLES[study]
  return text if epochs is None else f"{text} ({epochs} epochs)"
