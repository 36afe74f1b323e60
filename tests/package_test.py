"""The top-level package: its subpackages are attributes, imported lazily."""

import importlib
import json
import os
import re
import subprocess
import sys

import pytest

import gaf_optax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("data", "models", "nn", "nnx", "training", "transforms")


def _run(code: str) -> dict:
  """Runs ``code`` in a fresh interpreter; it prints one JSON object."""
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
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


def test_training_on_a_core_install_trains_and_each_extra_names_itself():
  # What the README says of a core install (`pip install gaf-optax`): the
  # training extra's own packages are absent; Orbax comes with Flax.
  out = _run("""if True:
    import json, os, sys, tempfile
    for name in ("sklearn", "PIL", "grain", "tqdm", "tensorboardX",
                 "ml_collections", "tensorflow_datasets"):
      sys.modules[name] = None
    import numpy as np, optax
    from gaf_optax import data, models, training
    messages = {}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4, 4, 1)).astype(np.float32)
    y = (x.reshape(128, -1).sum(1) > 0).astype(np.int32)
    ds = data.Dataset(train=data.ArraySource(x, y), test=data.ArraySource(x, y),
                      num_classes=2, name="arrays", image_shape=(4, 4, 1),
                      mean=np.zeros(1, np.float32),
                      std=np.ones(1, np.float32))
    workdir = tempfile.mkdtemp()
    trainer = training.Trainer(models.MLP(features=(8,), num_classes=2),
                               optax.sgd(0.5), ds, batch_size=32,
                               num_epochs=20)
    summary = trainer.fit(workdir)
    messages["trained"] = sorted(os.listdir(workdir))
    messages["accuracy"] = summary["last_test_accuracy"]
    try:
      data.get("digits")
    except ImportError as e:
      messages["digits"] = str(e)
    images = os.path.join(workdir, "images")
    for split in ("train", "test"):
      os.makedirs(os.path.join(images, split, "a"))
      open(os.path.join(images, split, "a", "x.png"), "wb").close()
    try:
      data.get("folder:" + images)
    except ImportError as e:
      messages["folder"] = str(e)
    try:
      training.Trainer(models.MLP(features=(8,), num_classes=2),
                       optax.sgd(0.1), ds, batch_size=32,
                       data_workers=1).fit(None)
    except ImportError as e:
      messages["workers"] = str(e)
    print(json.dumps(messages))
  """)
  assert "checkpoints" in out["trained"] and "metrics.jsonl" in out["trained"]
  assert out["accuracy"] > 0.8
  assert "scikit-learn" in out["digits"]
  assert "Pillow" in out["folder"] or "pillow" in out["folder"]
  assert "grain" in out["workers"]


def test_the_distribution_carries_its_license_types_marker_and_changelog():
  with open(os.path.join(REPO, "pyproject.toml")) as f:
    pyproject = f.read()
  assert 'license = "Apache-2.0"' in pyproject
  assert 'license-files = ["LICENSE"]' in pyproject
  with open(os.path.join(REPO, "LICENSE")) as f:
    license_text = f.read()
  assert "Apache License" in license_text and "Version 2.0" in license_text
  # PEP 561: the marker ships inside the package.
  assert os.path.isfile(os.path.join(REPO, "gaf_optax", "py.typed"))
  assert 'gaf_optax = ["py.typed"]' in pyproject
  version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
  with open(os.path.join(REPO, "CHANGELOG.md")) as f:
    assert f"## {version}" in f.read()
