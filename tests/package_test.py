"""The top-level package: its subpackages are attributes, imported lazily."""

import importlib
import json
import os
import subprocess
import sys

import pytest

import gaf_optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("data", "models", "nn", "nnx", "training", "transforms")


def _run(code: str) -> dict:
  """Runs ``code`` in a fresh interpreter; it prints one JSON object."""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_is_an_attribute(name):
  module = getattr(gaf_optax, name)
  assert module is importlib.import_module(f"gaf_optax.{name}")
  assert module.__name__ == f"gaf_optax.{name}"
  assert name in dir(gaf_optax)


def test_subpackages_are_imported_on_first_access_only():
  code = """if True:
    import json, sys
    def loaded():
      return sorted(m for m in sys.modules
                    if m.split(".")[0] in ("gaf_optax", "flax", "orbax"))
    out = {}
    import gaf_optax
    out["import"] = loaded()
    out["dir"] = [n for n in dir(gaf_optax) if not n.startswith("_")]
    gaf_optax.nn
    out["nn"] = loaded()
    gaf_optax.training.Trainer
    out["training"] = loaded()
    print(json.dumps(out))
  """
  out = _run(code)
  top = lambda names: {n for n in names if n.count(".") <= 1}
  # `import gaf_optax`: the optimizers only; no Flax, no training extra.
  assert top(out["import"]) == {"gaf_optax", "gaf_optax.transforms"}
  assert set(SUBPACKAGES) <= set(out["dir"])
  assert "gaf_optax.nn" in out["nn"] and "flax" in out["nn"]
  assert "gaf_optax.training" not in out["nn"]
  assert "orbax" not in out["nn"]
  assert {"gaf_optax.training", "orbax"} <= set(out["training"])


def test_star_import_stays_light():
  out = _run("""if True:
    import json, sys
    from gaf_optax import *
    print(json.dumps({"sgd_gaf": "sgd_gaf" in dir(),
                      "flax": "flax" in sys.modules,
                      "training": "gaf_optax.training" in sys.modules}))
  """)
  assert out == {"sgd_gaf": True, "flax": False, "training": False}


def test_an_unknown_attribute_is_the_usual_attribute_error():
  with pytest.raises(AttributeError,
                     match=r"^module 'gaf_optax' has no attribute 'trainer'$"):
    gaf_optax.trainer  # pylint: disable=pointless-statement
  assert not hasattr(gaf_optax, "experiments")
  assert getattr(gaf_optax, "nope", None) is None


def test_training_without_its_extra_is_the_import_error_naming_it():
  out = _run("""if True:
    import json, sys
    sys.modules["orbax"] = None
    sys.modules["orbax.checkpoint"] = None
    import gaf_optax
    errors = []
    try:
      gaf_optax.training
    except ImportError as e:
      errors.append(str(e))
    try:
      import gaf_optax.training
    except ImportError as e:
      errors.append(str(e))
    print(json.dumps({"errors": errors,
                      "nn": gaf_optax.nn.__name__,
                      "models": gaf_optax.models.__name__}))
  """)
  message = ("gaf_optax.training needs orbax-checkpoint, which comes with "
             "the 'training' extra: pip install 'gaf-optax[training]'.")
  assert out["errors"] == [message, message]
  # The rest of the package is still there.
  assert (out["nn"], out["models"]) == ("gaf_optax.nn", "gaf_optax.models")
