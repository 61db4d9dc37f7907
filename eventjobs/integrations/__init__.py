"""Bridges to other stream frameworks (Faust)."""
