"""irae: batch image restoration with the Invertible Restoring Autoencoder."""

__version__ = "0.1.0"
