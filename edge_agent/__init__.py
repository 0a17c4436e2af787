"""Edge agent for shop-floor process monitoring: poll machines, compute process-quality indicators, publish them."""

__version__ = "0.1.0"
