"""Kiln: immutable AMI releases — bake, release, roll back."""

__version__ = "0.1.0"
