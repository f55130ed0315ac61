"""Reader for the UCSD Anomaly Detection Dataset, Ped1 (host-side NumPy/PIL only).

Official layout (Gangloff et al. 2022, section III-C, use Ped1)::

    <root>/UCSDped1/Train/TrainNNN/NNN.tif     normal clips
    <root>/UCSDped1/Test/TestNNN/NNN.tif       test clips
    <root>/UCSDped1/Test/TestNNN_gt/NNN.bmp    pixel masks (0/255), only for some clips
    <root>/UCSDped1/Test/UCSDped1.m            frame-level annotation, one line per test clip:
                                               TestVideoFile{end+1}.gt_frame = [60:152];

`root` may also be the UCSDped1 folder itself. Frames are decoded eagerly as greyscale
[image_size, image_size, 1] uint8. macOS junk ('._*', '.DS_Store') and anything that is not
a .tif/.tiff/.bmp frame is skipped; frames are sorted numerically (2.tif before 10.tif).

Splits:
  train: every frame of the training clips that are not held out.
  val:   whole held-out TRAINING clips (consecutive frames are near-duplicates, so holding
         out single frames would leak); validation_indices(num_clips, val_fraction, seed)
         picks the clips: max(1, round(val_fraction * num_clips)) when val_fraction > 0 and
         there are >= 2 clips, else none.
  test:  every test frame; label 1 iff the frame (1-based position in its clip) lies in the
         clip's gt_frame ranges in UCSDped1.m. Without UCSDped1.m, labels come from the
         pixel masks (anomalous iff the mask is non-empty) and clips without a _gt folder
         are left out with a warning. masks come from TestNNN_gt (binarised > 127, nearest
         resize); has_mask is False for frames of clips without a _gt folder.
"""

from __future__ import annotations

import pathlib
import re
import typing
import warnings

import numpy as np
from PIL import Image

from vqjax.data.dataset import Dataset, Split, validation_indices
# The MVTec reader's checks and decoding, so both readers resize and binarise identically.
from vqjax.data.mvtec import binarise_mask, check_image_size, check_val_fraction
from vqjax.image_files import image_array, read_image

PED1_FOLDER = "UCSDped1"
ANNOTATION_FILE = "UCSDped1.m"
FRAME_EXTENSIONS = frozenset({".tif", ".tiff", ".bmp"})
CATEGORY = "ped1"

_EXPECTED_LAYOUT = (
    "expected UCSD Ped1 layout (root = the folder holding UCSDped1, or UCSDped1 itself):\n"
    "  <root>/UCSDped1/Train/TrainNNN/NNN.tif\n"
    "  <root>/UCSDped1/Test/TestNNN/NNN.tif\n"
    "  <root>/UCSDped1/Test/TestNNN_gt/NNN.bmp   (pixel masks, some clips)\n"
    "  <root>/UCSDped1/Test/UCSDped1.m           (frame annotation: gt_frame = [a:b, ...];)"
)
_GT_FRAME_LINE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")
_RANGE_TOKEN = re.compile(r"(\d+)(?::(\d+))?")


class _Frame(typing.NamedTuple):
  """One frame to decode. label None = anomalous iff its mask is non-empty."""
  path: pathlib.Path
  mask_path: pathlib.Path | None
  label: int | None


def load_ucsd_ped1(root, image_size: int = 128, val_fraction: float = 0.1,
                   seed: int = 0) -> Dataset:
  """Ped1 as a Dataset (category 'ped1'); see the module docstring for the splits."""
  check_image_size(image_size)
  check_val_fraction(val_fraction)
  ped1_dir = _ped1_dir(pathlib.Path(root))
  train_clips = _clip_dirs(ped1_dir / "Train", "Train")
  val_index, train_index = validation_indices(len(train_clips), val_fraction, seed)

  def normal_frames(clip_index):
    return [_Frame(path, None, 0) for i in clip_index for path in _frame_files(train_clips[i])]

  train = _load_split(ped1_dir, normal_frames(train_index), image_size, with_has_mask=False)
  val = _load_split(ped1_dir, normal_frames(val_index), image_size, with_has_mask=False)
  test = _load_split(ped1_dir, _test_frames(ped1_dir / "Test"), image_size, with_has_mask=True)
  return Dataset(category=CATEGORY, train=train, val=val, test=test)


# --- folder discovery ------------------------------------------------------------------


def _ped1_dir(root: pathlib.Path) -> pathlib.Path:
  """<root>/UCSDped1, or root itself when it already holds Train/ and Test/."""
  ped1_dir = root / PED1_FOLDER if (root / PED1_FOLDER).is_dir() else root
  for split in ("Train", "Test"):
    if not (ped1_dir / split).is_dir():
      raise FileNotFoundError(f"UCSD Ped1 folder {ped1_dir / split} does not exist; "
                              f"{_EXPECTED_LAYOUT}")
  return ped1_dir


def _number_key(path: pathlib.Path) -> tuple[float, str]:
  """Sort key: the last run of digits in the stem as a number, then the name."""
  digits = re.findall(r"\d+", path.stem)
  return (int(digits[-1]) if digits else float("inf"), path.name)


def _clip_dirs(split_dir: pathlib.Path, prefix: str) -> list[pathlib.Path]:
  """<prefix>NNN clip folders (not the _gt ones), sorted by clip number."""
  pattern = re.compile(rf"{prefix}\d+")
  clips = sorted((d for d in split_dir.iterdir() if d.is_dir() and pattern.fullmatch(d.name)),
                 key=_number_key)
  if not clips:
    raise FileNotFoundError(f"folder {split_dir} holds no {prefix}NNN clip folders; "
                            f"{_EXPECTED_LAYOUT}")
  return clips


def _clip_number(clip_dir: pathlib.Path) -> int:
  return int(re.findall(r"\d+", clip_dir.name)[-1])


def _frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """Frames of a clip (or _gt) folder, numerically sorted; junk and other files skipped."""
  frames = sorted((p for p in folder.iterdir()
                   if not p.name.startswith(".") and p.suffix.lower() in FRAME_EXTENSIONS
                   and p.is_file()), key=_number_key)
  if not frames:
    raise FileNotFoundError(f"clip folder {folder} holds no frames "
                            f"(extensions {sorted(FRAME_EXTENSIONS)}); {_EXPECTED_LAYOUT}")
  return frames


# --- test annotation -------------------------------------------------------------------


def read_gt_frames(annotation_path) -> list[list[tuple[int, int]]]:
  """Per test clip (index 0 = Test001), its 1-based inclusive anomalous frame ranges.

  Parses the `gt_frame = [a:b, c:d];` lines of UCSDped1.m in order; a single number n
  means n:n and `[]` means no anomalous frame.
  """
  annotation_path = pathlib.Path(annotation_path)
  clips = []
  for line_number, line in enumerate(annotation_path.read_text().splitlines(), start=1):
    match = _GT_FRAME_LINE.search(line.split("%", 1)[0])  # '%' starts a MATLAB comment
    if match is not None:
      clips.append(_parse_ranges(match.group(1), f"{annotation_path}:{line_number}"))
  if not clips:
    raise ValueError(f"annotation file {annotation_path} has no 'gt_frame = [a:b];' lines; "
                     f"{_EXPECTED_LAYOUT}")
  return clips


def _parse_ranges(text: str, where: str) -> list[tuple[int, int]]:
  ranges = []
  for token in re.split(r"[,\s]+", re.sub(r"\s*:\s*", ":", text.strip())):
    if not token:
      continue
    match = _RANGE_TOKEN.fullmatch(token)
    start = int(match.group(1)) if match else 0
    end = int(match.group(2) or start) if match else 0
    if not 1 <= start <= end:  # also catches tokens that did not match
      raise ValueError(f"{where}: cannot parse frame range {token!r}; expected 1-based "
                       f"'start:end' (start <= end) or a single frame number")
    ranges.append((start, end))
  return ranges


def _labels_from_ranges(ranges: list[tuple[int, int]], num_frames: int, clip_dir: pathlib.Path,
                        annotation_path: pathlib.Path) -> list[int]:
  """[num_frames] 0/1 labels: 1 where the frame's 1-based position lies in a range."""
  labels = [0] * num_frames
  for start, end in ranges:
    if end > num_frames:
      raise ValueError(f"{annotation_path} marks frames {start}:{end} of {clip_dir}, which "
                       f"has only {num_frames} frames")
    labels[start - 1:end] = [1] * (end - start + 1)
  return labels


def _test_frames(test_dir: pathlib.Path) -> list[_Frame]:
  """Every labelled test frame, clip by clip; see the module docstring for the label rule."""
  annotation_path = test_dir / ANNOTATION_FILE
  clip_ranges = read_gt_frames(annotation_path) if annotation_path.is_file() else None
  frames, unlabelled = [], []
  for clip_dir in _clip_dirs(test_dir, "Test"):
    clip_frames = _frame_files(clip_dir)
    gt_dir = clip_dir.with_name(f"{clip_dir.name}_gt")
    mask_paths = _mask_files(gt_dir, clip_dir, len(clip_frames)) if gt_dir.is_dir() else None
    if clip_ranges is not None:
      number = _clip_number(clip_dir)
      if not 1 <= number <= len(clip_ranges):
        raise ValueError(f"{annotation_path} has {len(clip_ranges)} gt_frame lines (one per "
                         f"clip, Test001 first) but clip folder {clip_dir} exists")
      labels = _labels_from_ranges(clip_ranges[number - 1], len(clip_frames), clip_dir,
                                   annotation_path)
    elif mask_paths is not None:
      labels = [None] * len(clip_frames)  # decided by the mask when it is decoded
    else:
      unlabelled.append(clip_dir.name)
      continue
    masks = mask_paths or [None] * len(clip_frames)
    frames.extend(_Frame(*item) for item in zip(clip_frames, masks, labels))
  if unlabelled:
    warnings.warn(f"{annotation_path} is missing, so test labels come from the _gt masks; "
                  f"test clips without a _gt folder are left out: {', '.join(unlabelled)}",
                  stacklevel=3)
  if not frames:
    raise FileNotFoundError(f"no test clip of {test_dir} has labels: {ANNOTATION_FILE} is "
                            f"missing and no TestNNN_gt folder exists; {_EXPECTED_LAYOUT}")
  return frames


def _mask_files(gt_dir: pathlib.Path, clip_dir: pathlib.Path, num_frames: int):
  masks = _frame_files(gt_dir)
  if len(masks) != num_frames:
    raise ValueError(f"ground-truth folder {gt_dir} holds {len(masks)} masks but clip folder "
                     f"{clip_dir} holds {num_frames} frames; expected one mask per frame")
  return masks


# --- decoding --------------------------------------------------------------------------


def _load_split(ped1_dir: pathlib.Path, frames: list[_Frame], image_size: int,
                with_has_mask: bool) -> Split:
  """Decode frames into a Split; names relative to ped1_dir ('Test/Test003/017.tif').

  with_has_mask: give has_mask (True where a mask was read); else None (normal frames,
  whose all-False masks are exact).
  """
  n = len(frames)
  images = np.zeros((n, image_size, image_size, 1), np.uint8)
  masks = np.zeros((n, image_size, image_size), bool)
  labels = np.zeros((n,), np.int32)
  for i, frame in enumerate(frames):
    images[i] = image_array(read_image(frame.path), 1, image_size)
    label = frame.label
    if frame.mask_path is not None:
      full_mask = binarise_mask(read_image(frame.mask_path))
      masks[i] = _resize_mask(full_mask, image_size)
      if label is None:
        label = int(full_mask.any())  # at full resolution: a tiny blob still counts
    labels[i] = label
  names = tuple(frame.path.relative_to(ped1_dir).as_posix() for frame in frames)
  has_mask = (np.array([frame.mask_path is not None for frame in frames], bool)
              if with_has_mask else None)
  return Split(images=images, masks=masks, labels=labels, names=names, has_mask=has_mask)


def _resize_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
  """[H,W] bool -> [image_size, image_size] bool, nearest neighbour."""
  resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(
      (image_size, image_size), Image.Resampling.NEAREST)
  return np.asarray(resized) > 0
