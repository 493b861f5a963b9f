"""Tests of brubeckservice, one module per module of the package."""
