"""Protocol drivers: turn OPC UA and Modbus TCP reads into Readings batches."""
