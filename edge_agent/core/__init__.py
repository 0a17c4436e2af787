"""The vectorized indicator engine: arrays in, arrays out, no I/O and no clocks."""
