"""Event sinks: where lifecycle events go besides the node's socket and log (MQTT today)."""
