"""Tests for the brubeck package, mirroring its modules."""
