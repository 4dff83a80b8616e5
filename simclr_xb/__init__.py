"""simclr_xb: SimCLR on MLX and PyTorch from one backend-agnostic core."""
__version__ = "0.1.0"
