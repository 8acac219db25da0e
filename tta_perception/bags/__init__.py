"""ROS 2 bags without ROS (``rosbags``): the embedded world as a bag (``make``), offline replay of a
camera bag through the adaptation (``replay``), and the reading/writing underneath (``io``).

Nothing here imports rclpy, so bags are made and replayed on machines without ROS.
"""
from .io import BagError, BagReader, BagWriter

__all__ = ["BagError", "BagReader", "BagWriter"]
