"""The ROS 2 layer: only what imports rclpy or message types, thin over the ROS-free ``runtime``.

- nodes: ``tta_node`` (lifecycle adaptation node over ``runtime.session``), ``weather_camera``,
  ``carla_weather``, ``evaluator``;
- ``convert``: message <-> array conversion (images in, a frame's outputs out as messages);
- ``qos``: the QoS profiles; ``spin``: what every node's ``main`` shares;
- ``weather_loop``: the synthetic weather loop in one process (the demo);
- ``node_bench``: the DDS side of ``tta-perception node-bench`` (its protocol and report: ``bench.node``);
- ``dds_profile``: the DDS profiles for large frames (``dds/``); it imports no rclpy, since the profile
  must be in the environment before a participant exists.

Nothing outside ``ros/`` and ``cli/`` imports this package (a test walks the imports).
"""
