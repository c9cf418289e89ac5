"""The embxfer protocol as sans-I/O state machines: events in, actions out."""
