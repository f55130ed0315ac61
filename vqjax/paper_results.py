"""Published numbers to print beside ours, one place for every method.

Gangloff et al. 2022 Tables I-III (VQ-VAE SSIM / SSIM+AM), Wang et al. 2020 Tables 1-4 (latent
resampling, the "Proposed" columns) and Dehaene & Eline 2020 Table 1 and Fig. 3b (FAVAE and its
ablations), Chen et al. 2022 Tables 1-4 (IGD, single classifier). `paper_values(dataset,
category, variant)` gives the
(metric, value) pairs a paper reports for one of our map variants; metric names are those of
vqjax.metrics (pixel_auroc = pooled over all test pixels of a category).
"""
from __future__ import annotations

_MVTEC_TABLE_I = {  # pixel AUROC: (VQ-VAE SSIM, VQ-VAE SSIM+AM)
    "carpet": (0.92, 0.94), "grid": (0.99, 0.99), "leather": (0.98, 0.98),
    "tile": (0.70, 0.75), "wood": (0.82, 0.84), "bottle": (0.94, 0.95),
    "cable": (0.87, 0.87), "capsule": (0.93, 0.94), "hazelnut": (0.98, 0.99),
    "metal_nut": (0.89, 0.90), "pill": (0.86, 0.90), "screw": (0.98, 0.98),
    "toothbrush": (0.96, 0.97), "transistor": (0.77, 0.78), "zipper": (0.97, 0.98),
    "mean": (0.90, 0.92),
}
_CIFAR10_TABLE_III = {  # image AUROC (map mean): (VQ-VAE SSIM, VQ-VAE SSIM+AM)
    "airplane": (0.71, 0.69), "automobile": (0.63, 0.65), "bird": (0.63, 0.65),
    "cat": (0.62, 0.63), "deer": (0.60, 0.64), "dog": (0.67, 0.67), "frog": (0.61, 0.63),
    "horse": (0.63, 0.63), "ship": (0.74, 0.74), "truck": (0.64, 0.65), "mean": (0.65, 0.66),
}
_UCSD_TABLE_II = {"ped1": (0.95, 0.95), "mean": (0.95, 0.95)}  # pixel AUROC

# dataset -> (metric the paper reports, {category: (ssim, ssim_am)})
GANGLOFF_2022 = {
    "mvtec": ("pixel_auroc", _MVTEC_TABLE_I),
    "cifar10": ("image_auroc", _CIFAR10_TABLE_III),
    "ucsd_ped1": ("pixel_auroc", _UCSD_TABLE_II),
}

# Wang et al. 2020 on MVTec AD, "Proposed": category -> (Table 1 image accuracy (mean of the
# accuracies on anomalous and on normal images), Table 2 PRO at the threshold, Table 3 pixel
# AUROC, Table 4 image F1, Table 4 pixel F1).
_WANG_TABLES_1_4 = {
    "carpet": (0.71, 0.47, 0.94, 0.88, 0.33), "grid": (0.91, 0.89, 0.99, 0.97, 0.38),
    "wood": (0.96, 0.53, 0.87, 0.97, 0.42), "leather": (0.96, 0.80, 0.99, 0.98, 0.42),
    "tile": (0.95, 0.36, 0.88, 0.98, 0.30), "bottle": (0.99, 0.52, 0.95, 0.99, 0.55),
    "cable": (0.72, 0.40, 0.95, 0.82, 0.40), "capsule": (0.68, 0.31, 0.93, 0.68, 0.23),
    "hazelnut": (0.94, 0.54, 0.95, 0.93, 0.50), "metal_nut": (0.83, 0.36, 0.91, 0.93, 0.36),
    "pill": (0.68, 0.24, 0.95, 0.81, 0.20), "screw": (0.80, 0.47, 0.96, 0.81, 0.34),
    "toothbrush": (0.92, 0.69, 0.97, 0.97, 0.40), "transistor": (0.73, 0.08, 0.91, 0.68, 0.11),
    "zipper": (0.97, 0.82, 0.98, 0.99, 0.58), "mean": (0.85, 0.50, 0.94, 0.89, 0.37),
}
_WANG_METRICS = ("image_accuracy", "pro", "pixel_auroc", "image_f1", "pixel_f1")

# Dehaene & Eline 2020 Table 1 (MVTec AD, means of 5 runs): category -> (pixel AUROC FAVAE,
# pixel AUROC Vanilla VAE, image AUROC Vanilla VAE, image AUROC FAVAE), in the table's order.
_FAVAE_TABLE_1 = {
    "carpet": (0.960, 0.620, 0.515, 0.671), "grid": (0.993, 0.856, 0.904, 0.970),
    "leather": (0.981, 0.835, 0.619, 0.675), "tile": (0.714, 0.520, 0.512, 0.805),
    "wood": (0.899, 0.699, 0.875, 0.948), "bottle": (0.963, 0.894, 0.985, 0.999),
    "cable": (0.969, 0.816, 0.805, 0.950), "capsule": (0.976, 0.907, 0.694, 0.804),
    "hazelnut": (0.987, 0.951, 0.922, 0.993), "metal_nut": (0.966, 0.861, 0.676, 0.852),
    "pill": (0.953, 0.879, 0.808, 0.821), "screw": (0.993, 0.928, 0.654, 0.837),
    "toothbrush": (0.987, 0.953, 0.987, 0.958), "transistor": (0.984, 0.851, 0.871, 0.932),
    "zipper": (0.968, 0.775, 0.797, 0.972), "mean": (0.953, 0.823, 0.775, 0.879),
}
# Fig. 3b: means over the MVTec categories only, (pixel AUROC, image AUROC).
_FAVAE_FIG_3B = {"favae_random_vgg16": (0.899, 0.764), "favae_own_encoder": (0.890, 0.779)}


# Chen et al. 2022 (IGD) on MVTec AD: category -> (Table 2 mean accuracy, Table 3 image AUROC);
# Table 4 gives only the mean of per-anomalous-image pixel AUROCs over all categories.
_IGD_TABLES_2_3 = {
    "bottle": (0.96, 0.998), "hazelnut": (0.94, 0.981), "capsule": (0.83, 0.884),
    "metal_nut": (0.85, 0.889), "leather": (0.74, 0.915), "pill": (0.74, 0.815),
    "wood": (0.84, 0.958), "carpet": (0.79, 0.799), "tile": (0.92, 0.971),
    "grid": (0.77, 0.823), "cable": (0.81, 0.901), "transistor": (0.84, 0.909),
    "toothbrush": (0.93, 0.986), "screw": (0.78, 0.748), "zipper": (0.91, 0.946),
    "mean": (0.84, 0.901),
}
_IGD_TABLE_4_MEAN = 0.91  # mean pixel AUROC over the anomalous test images
# Table 1, "Ours" single classifier: mean image AUROC over the 10 one-vs-rest classes.
_IGD_TABLE_1 = {"mnist": 0.9912, "cifar10": 0.8234, "fashion_mnist": 0.9332}


def _igd_values(dataset: str, category: str) -> list[tuple[str, float]]:
  if dataset == "mvtec":
    row = _IGD_TABLES_2_3.get(category)
    values = [] if row is None else [("image_accuracy", row[0]), ("image_auroc", row[1])]
    if category == "mean":
      values.append(("per_image_pixel_auroc", _IGD_TABLE_4_MEAN))
    return values
  if dataset in _IGD_TABLE_1 and category == "mean":
    return [("image_auroc", _IGD_TABLE_1[dataset])]
  return []


def _favae_values(category: str, variant: str) -> list[tuple[str, float]]:
  if variant in ("favae", "vanilla_vae"):
    row = _FAVAE_TABLE_1.get(category)
    if row is None:
      return []
    pixel, image = (row[0], row[3]) if variant == "favae" else (row[1], row[2])
    return [("pixel_auroc", pixel), ("image_auroc", image)]
  if variant in _FAVAE_FIG_3B and category == "mean":
    return list(zip(("pixel_auroc", "image_auroc"), _FAVAE_FIG_3B[variant]))
  return []


def paper_values(dataset: str, category: str, variant: str) -> list[tuple[str, float]]:
  """[(metric, published value)] for one of our map variants on a category ('mean' = the
  paper's mean row); [] where no paper reports it."""
  category = category.split("/")[-1]
  if variant in ("ssim", "ssim_am") and dataset in GANGLOFF_2022:
    metric, table = GANGLOFF_2022[dataset]
    row = table.get(category)
    return [] if row is None else [(metric, row[("ssim", "ssim_am").index(variant)])]
  if variant == "igd":
    return _igd_values(dataset, category)
  if dataset == "mvtec" and variant == "resample":
    row = _WANG_TABLES_1_4.get(category)
    return [] if row is None else list(zip(_WANG_METRICS, row))
  if dataset == "mvtec":
    return _favae_values(category, variant)
  return []
