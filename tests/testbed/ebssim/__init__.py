"""ebssim: the EBS data-plane simulator, an HTTP proxy in front of moto (see README.md)."""
