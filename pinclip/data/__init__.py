"""Pins tables, board edges, images, splits and the embedded demo corpus."""
