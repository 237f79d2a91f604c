"""Adapters that do the I/O behind one port; controllers cannot tell them apart."""
