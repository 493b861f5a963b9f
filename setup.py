"""Thin shim: metadata and tool configuration live in pyproject.toml."""

from setuptools import setup

setup()
