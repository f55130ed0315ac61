"""PyTorch reference of vqjax's VQ-VAE SSIM / SSIM+AM pipeline, for JAX-vs-PyTorch benchmarks.

Written the way reference PyTorch code is (NCHW, eager nn.Modules, F.conv2d), and kept
numerically equal to the Flax model: tests/test_torch_parity.py checks it after
`convert.load_flax_variables` copied a Flax checkpoint's variables in.
"""
