"""toalab: a network emulation lab for the TOA/UOA address option."""

__version__ = "0.1.0"
