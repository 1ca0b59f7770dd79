"""genpolicy: generative (diffusion and flow) robot policies."""

__version__ = "0.1.0"
