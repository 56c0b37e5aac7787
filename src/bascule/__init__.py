"""bascule: a load balancer and reverse proxy for every connection model."""

__version__ = "0.1.0"
