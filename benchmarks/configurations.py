"""What the harness measures: presets, parts and variants (no JAX / torch import here, so the
CLI can set XLA's environment before JAX loads)."""
from __future__ import annotations

PRESETS = {
    # configs/mvtec_vq.py preset, inference / SSIM batches, train batches, timed calls,
    # warm-up calls
    "paper": dict(config="paper", batches=(1, 8, 64, 256), train_batches=(32, 64),
                  repeats=50, warmup=10),
    "cpu": dict(config="default", batches=(1, 8, 32), train_batches=(8, 32),
                repeats=20, warmup=3),
    "smoke": dict(config="smoke", batches=(1, 4), train_batches=(4,), repeats=3, warmup=1),
}
# CPU deployment parts (benchmarks/deploy_cases.py), one per method -> the maps its rows return
# and compare with vqjax jit's: absolute difference, or relative to the largest value of the
# map for maps without a fixed scale.
DEPLOY_MAPS = {
    "deploy": (("ssim", "abs"), ("ssim_am", "rel")),  # VQ-VAE SM and SSIM+AM
    "deploy_favae": (("favae", "rel"),),  # FAVAE's merged log-density map
    "deploy_igd": (("igd", "abs"),),  # IGD's Eq. 12 map, in [0, 1]
    "deploy_resample": (("resample", "abs"),),  # latent resampling's map, 0..255 units
}
DEPLOY_PARTS = tuple(DEPLOY_MAPS)
PARTS = ("inference", "train", "ssim", "favae", "igd", "igd_train", *DEPLOY_PARTS)
# Parts timed at the preset's train_batches on uint8 batches (the train steps take uint8).
TRAIN_PARTS = ("train", "igd_train")
# Parts fed uint8 images (what a camera gives): the train steps and the deployment rows.
UINT8_PARTS = (*TRAIN_PARTS, *DEPLOY_PARTS)
# Parts run by default: the deploy parts need the deploy-bench extra and are asked for by name.
DEFAULT_PARTS = tuple(p for p in PARTS if p not in DEPLOY_PARTS)


def _deploy_variants(method: str) -> list[tuple[str, str, str]]:
  """The rows of a deploy part: `method` is '' for the VQ-VAE (its labels predate the others)."""
  m = f"{method} " if method else ""
  return [
      ("vqjax_fp32", f"vqjax {m}jit fp32", "fp32"),
      ("vqjax_exported", f"vqjax {m}exported artifact (vqjax.exported)", "fp32"),
      ("torch_eager_fp32", f"torch {m}eager fp32 (reference)", "fp32"),
      ("torch_compile_fp32", f"torch.compile {m}fp32", "fp32"),
      ("onnxruntime_fp32", f"ONNX Runtime CPU ({m}reference -> ONNX)", "fp32"),
      ("openvino_fp32", f"OpenVINO CPU, precision hint f32 (same {m}ONNX)", "fp32"),
      ("openvino_default", f"OpenVINO CPU, default precision hint (same {m}ONNX)", "default"),
  ]


# part -> [(variant key, label, precision)]; report.py's ratios refer to these keys.
VARIANTS = {
    "inference": [
        ("vqjax_fp32", "vqjax jit fp32", "fp32"),
        ("vqjax_bf16", "vqjax jit bf16", "bf16"),
        ("torch_eager_fp32", "torch eager fp32 (reference)", "fp32"),
        ("torch_eager_bf16_cl", "torch eager bf16 AMP + channels_last", "bf16"),
        ("torch_compile_bf16_cl", "torch.compile bf16 AMP + channels_last", "bf16"),
    ],
    "train": [
        ("vqjax_fp32", "vqjax jit train step fp32", "fp32"),
        ("vqjax_bf16", "vqjax jit train step bf16", "bf16"),
        ("torch_eager_fp32", "torch eager fp32", "fp32"),
        ("torch_eager_bf16_cl", "torch eager bf16 AMP + channels_last", "bf16"),
    ],
    "ssim": [
        ("vqjax_fp32", "vqjax ssim_map jit", "fp32"),
        ("torch_eager_fp32", "torch reference ssim_map eager", "fp32"),
    ],
    # FAVAE inference (configs/mvtec_favae.py preset of the same name: paper / default /
    # smoke): VAE + VGG16 -> merged log-density map, one model-input-sized image each.
    "favae": [
        ("vqjax_fp32", "vqjax FAVAE jit fp32", "fp32"),
        ("vqjax_bf16", "vqjax FAVAE jit bf16", "bf16"),
        ("torch_eager_fp32", "torch FAVAE eager fp32 (reference)", "fp32"),
        ("torch_eager_bf16_cl", "torch FAVAE eager bf16 AMP + channels_last", "bf16"),
        ("torch_compile_bf16_cl", "torch FAVAE torch.compile bf16 AMP + channels_last", "bf16"),
    ],
    # IGD inference (configs/mvtec_igd.py preset of the same name): global and local
    # autoencoders -> MS-SSIM, MAE and GSVDD maps and scores (Eq. 11, 12).
    "igd": [
        ("vqjax_fp32", "vqjax IGD jit fp32", "fp32"),
        ("vqjax_bf16", "vqjax IGD jit bf16", "bf16"),
        ("torch_eager_fp32", "torch IGD eager fp32 (reference)", "fp32"),
        ("torch_eager_bf16_cl", "torch IGD eager bf16 AMP + channels_last", "bf16"),
        ("torch_compile_bf16_cl", "torch IGD torch.compile bf16 AMP + channels_last", "bf16"),
    ],
    # IGD's training step (the same config), JAX only: no PyTorch twin of the training step.
    # Both scales' autoencoder and critic losses (Eq. 5-8), gradients, the two Adam updates;
    # no distilled encoder, so the encoder trains too (after distillation it is frozen and
    # fewer parameters train).
    "igd_train": [
        ("vqjax_fp32", "vqjax IGD jit train step fp32", "fp32"),
        ("vqjax_bf16", "vqjax IGD jit train step bf16", "bf16"),
    ],
    # CPU deployment (benchmarks/deploy_cases.py): each method's full map pipeline of the
    # same weights on uint8 images, vqjax against what factories deploy with.
    "deploy": _deploy_variants(""),
    "deploy_favae": _deploy_variants("FAVAE"),
    "deploy_igd": _deploy_variants("IGD"),
    "deploy_resample": _deploy_variants("resampling"),
}
# --fp32-precision -> jax_default_matmul_precision (convs and dots without explicit precision)
JAX_PRECISION = {"tf32": "tensorfloat32", "fp32": "float32"}
