"""The sinks: one package per output (registry.py lists them), fed from its disk outbox by delivery.py."""
