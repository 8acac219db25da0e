"""Thin ROS 2 layer over the engine.

The nodes (``tta_node``, ``weather_camera``, ``carla_weather``, ``evaluator``), ``qos``,
``weather_loop`` and ``node_bench`` import rclpy; the conversions (``image_codec``), the parameter
table (``params``), the frame pipeline (``pipeline``), the statistics (``health``), stamp matching
(``scoring``) and topic/weather message helpers (``world_msgs``) are plain Python/NumPy, so they are
testable and reusable without ROS (e.g. by the bag replay).
"""
