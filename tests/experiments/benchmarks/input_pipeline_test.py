"""The input-pipeline benchmark: its generated folder and one short run."""

import os

from PIL import Image

from experiments.benchmarks import input_pipeline



def test_folder_is_imagenet_like_and_the_run_reports_rates(tmp_path, capsys):
  root = str(tmp_path / "jpegs")
  rate = input_pipeline.main(["--images", "12", "--batch", "4", "--workers",
                              "0", "--rounds", "1", "--folder", root])
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root,
                                                                   "train"))
           for f in fs]
  assert len(files) == 12 and all(f.endswith(".JPEG") for f in files)
  for f in files:
    with Image.open(f) as im:
      assert 400 <= im.size[0] <= 600 and 300 <= im.size[1] <= 450
  whole, steady = rate[("gaf_optax", 0)]
  assert whole > 0 and steady > 0
  out = capsys.readouterr().out
  assert "| gaf_optax | 0 |" in out
  assert ("| torch | 0 |" in out) == (("torch", 0) in rate)
  mtime = os.path.getmtime(files[0])
  input_pipeline.make_folder(root, 12)  # kept: not written again
  assert os.path.getmtime(files[0]) == mtime
