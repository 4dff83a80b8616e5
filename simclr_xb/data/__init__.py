"""Data readers."""
