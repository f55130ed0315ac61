"""`python -m vqjax.main` that also records, for the multi-process tests, every file this
process writes under $VQJAX_TEST_RECORD_ROOT (one path per line in
$VQJAX_TEST_RECORD_FILE): which process writes the run's outputs is the thing under test.

Writes are seen where Python makes them: open() in a writing mode, tempfile.mkstemp and
os.replace/os.rename (the atomic writers of vqjax.report). Checkpoints (orbax, written by
every process by design) are recorded too; the test tells them apart by their folder.
"""
import builtins
import io
import os
import runpy
import tempfile

_root = os.path.realpath(os.environ["VQJAX_TEST_RECORD_ROOT"])
_record = open(os.environ["VQJAX_TEST_RECORD_FILE"], "a", encoding="utf-8", buffering=1)


def _note(path):
  try:
    path = os.path.realpath(os.fspath(path))
  except TypeError:  # a file descriptor
    return
  if path.startswith(_root + os.sep):
    _record.write(os.path.relpath(path, _root) + "\n")


def _wrap(fn, path_of):
  def wrapped(*args, **kwargs):
    result = fn(*args, **kwargs)
    for path in path_of(result, *args, **kwargs):
      _note(path)
    return result
  return wrapped


_open = builtins.open
builtins.open = _wrap(_open, lambda result, file, mode="r", *a, **k:
                      [file] if isinstance(file, (str, bytes, os.PathLike)) and
                      any(c in mode for c in "wax+") else [])
io.open = builtins.open  # pathlib's write_text/write_bytes open through io.open
tempfile.mkstemp = _wrap(tempfile.mkstemp, lambda result, *a, **k: [result[1]])
os.replace = _wrap(os.replace, lambda result, src, dst, *a, **k: [dst])
os.rename = _wrap(os.rename, lambda result, src, dst, *a, **k: [dst])

runpy.run_module("vqjax.main", run_name="__main__", alter_sys=True)
