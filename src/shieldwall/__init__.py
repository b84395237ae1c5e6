"""shieldwall: DDoS mitigation and packet filtering with an XDP data plane."""

__version__ = "0.1.0"
