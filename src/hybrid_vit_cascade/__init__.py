"""Hybrid-ViT Cascade: 3D CT from one or two X-rays with a cascade of v-parameterised diffusion models."""

__version__ = "0.1.0"
