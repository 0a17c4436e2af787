"""Simulated machines that speak real OPC UA and Modbus TCP, for tests, training and demos."""
