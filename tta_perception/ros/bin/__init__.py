"""The launchers installed in <prefix>/lib/tta_perception/ (shell scripts, data only; a package so
setuptools installs them as package data)."""
