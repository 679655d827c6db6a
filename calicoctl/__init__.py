"""calicoctl: the operator's command line (a thin click shell over libcalico)."""

__version__ = "0.1.0"
