"""Published numbers to print beside ours (Gangloff et al. 2022, Tables I-III).

Keyed by dataset, then category; each entry maps a variant to (metric, value).
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


def paper_value(dataset: str, category: str, variant: str) -> tuple[str, float] | None:
  """(metric, published value) for a vqvae_ssim variant, or None if the paper has none."""
  if dataset not in GANGLOFF_2022 or variant not in ("ssim", "ssim_am"):
    return None
  metric, table = GANGLOFF_2022[dataset]
  row = table.get(category.split("/")[-1])
  return None if row is None else (metric, row[("ssim", "ssim_am").index(variant)])
