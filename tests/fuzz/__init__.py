"""Tests for the fuzz targets (fuzz/): their stored corpus, replayed."""
