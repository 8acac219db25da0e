"""Thin ROS 2 layer over the engine.

Only ``tta_node`` and ``qos`` import rclpy; the conversions (``image_codec``), the parameter table
(``params``), the frame pipeline (``pipeline``) and the statistics (``health``) are plain Python/NumPy so
they are testable and reusable without ROS (e.g. by the bag replay).
"""
