"""Publishers: MQTT and InfluxDB, fed from the disk outbox."""
