"""Equipment features (OEE, furnace, mould): one module each behind features/base.py, listed in features/registry.py."""
