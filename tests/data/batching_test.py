"""batches: order from (seed, epoch), process shards, resume, eval padding."""

import numpy as np
import pytest

from gaf_optax import data

N = 23


def _source(n=N):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones(
      (1, 2, 2, 3), np.uint8)
  return data.ArraySource(images, np.arange(n) % 7)


def _ids(batches):
  return [b["image"][:, 0, 0, 0].tolist() for b in batches]


class _PlainSource:
  """Only len and getitem: the generic read path."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    return self.source[i]


def test_epoch_is_a_function_of_seed_and_epoch():
  src = _source()
  a = _ids(data.batches(src, 4, seed=3, epoch=1))
  b = _ids(data.batches(src, 4, seed=3, epoch=1))
  assert a == b and len(a) == N // 4 == data.steps_per_epoch(src, 4)
  assert a != _ids(data.batches(src, 4, seed=3, epoch=2))
  assert a != _ids(data.batches(src, 4, seed=4, epoch=1))
  flat = sum(a, [])
  assert len(set(flat)) == len(flat) == 20  # No repeats; remainder dropped.


def test_batch_contents_and_dtypes():
  src = _source()
  batch = next(data.batches(src, 5, seed=0, epoch=0))
  assert batch.keys() == {"image", "label"}
  assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
  assert batch["image"].shape == (5, 2, 2, 3)
  np.testing.assert_array_equal(batch["label"], batch["image"][:, 0, 0, 0] % 7)


@pytest.mark.parametrize("shuffle,drop", [(True, True), (False, False)])
def test_processes_partition_each_global_batch(shuffle, drop):
  src = _source()
  kw = dict(seed=1, epoch=5, shuffle=shuffle, drop_remainder=drop)
  whole = list(data.batches(src, 6, **kw))
  parts = [list(data.batches(src, 6, process_index=p, process_count=2, **kw))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  for i, batch in enumerate(whole):
    for key in batch:
      assert parts[0][i][key].shape[0] == 3
      np.testing.assert_array_equal(
          np.concatenate([parts[0][i][key], parts[1][i][key]]), batch[key])


def test_start_batch_equals_skipping():
  src = _source()
  full = _ids(data.batches(src, 4, seed=2, epoch=7))
  assert _ids(data.batches(src, 4, seed=2, epoch=7, start_batch=3)) == full[3:]
  assert _ids(data.batches(src, 4, seed=2, epoch=7, start_batch=99)) == []


def test_eval_padding_and_mask_cover_each_example_once():
  src = _source()
  out = list(data.batches(src, 4, seed=0, epoch=0, shuffle=False,
                          drop_remainder=False))
  assert len(out) == 6
  assert all(b["image"].shape[0] == 4 and b["mask"].dtype == bool
             for b in out)
  real = np.concatenate([b["image"][b["mask"], 0, 0, 0] for b in out])
  np.testing.assert_array_equal(real, np.arange(N))
  np.testing.assert_array_equal(out[-1]["mask"], [True, True, True, False])
  # Sharded over 2 processes, the masked rows still cover each example once.
  seen = []
  for p in range(2):
    for b in data.batches(src, 4, seed=0, epoch=0, shuffle=False,
                          drop_remainder=False, process_index=p,
                          process_count=2):
      seen += b["image"][b["mask"], 0, 0, 0].tolist()
  assert sorted(seen) == list(range(N))


def test_workers_and_generic_sources_give_the_same_batches():
  src = _source()
  ref = list(data.batches(src, 4, seed=9, epoch=1))
  for other in (data.batches(src, 4, seed=9, epoch=1, num_workers=2),
                data.batches(_PlainSource(src), 4, seed=9, epoch=1)):
    other = list(other)
    assert len(other) == len(ref)
    for x, y in zip(ref, other):
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])


def test_bad_arguments():
  with pytest.raises(ValueError, match="divisible by process_count"):
    next(data.batches(_source(), 5, seed=0, epoch=0, process_count=2))
  with pytest.raises(ValueError, match="process_index"):
    next(data.batches(_source(), 4, seed=0, epoch=0, process_index=2,
                      process_count=2))


def test_the_main_guard_check_reads_the_script_as_python_does():
  import ast  # pylint: disable=g-import-not-at-top
  from gaf_optax.data import _batching  # pylint: disable=g-import-not-at-top
  tree = ast.parse(
      "import x\n"                                    # 1
      "fit()\n"                                       # 2
      "if __name__ == '__main__' and x.ok:\n"         # 3
      "  a = 1\n"                                     # 4
      "  fit()\n"                                     # 5
      "if '__main__' == __name__:\n"                  # 6
      "  fit()\n"                                     # 7
      "else:\n"                                       # 8
      "  fit()\n"                                     # 9
      "if __name__ == 'other':\n"                     # 10
      "  fit()\n")                                    # 11
  assert [line for line in range(1, 12)
          if _batching._under_main_guard(tree, line)] == [4, 5, 7]
