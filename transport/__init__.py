"""Bytes and messages: control channels, data transports and the wire codec; no protocol rules."""
