"""Record processing stages."""
