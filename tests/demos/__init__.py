"""Tests of the demo in demos/, run as a person runs it."""
