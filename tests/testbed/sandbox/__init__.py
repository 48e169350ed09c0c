"""The pgml-operator test bed: a real control plane, moto behind the EBS simulator, and
simulated nodes with their own zfs-fuse daemons. `python -m sandbox up|down|status`."""
