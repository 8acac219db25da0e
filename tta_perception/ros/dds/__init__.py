"""The DDS profiles for large camera frames (XML, data only; a package so setuptools installs them as
package data). :mod:`tta_perception.ros.dds_profile` finds and applies them."""
