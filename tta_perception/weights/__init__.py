"""The committed source weights (data only; a package so setuptools installs them as package data)."""
