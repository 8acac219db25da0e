"""tta_perception: online test-time adaptation for camera perception (DPLOT + baselines).

Layout (no module outside ``ros/`` imports ROS):
- ``world``   procedural driving world with CARLA-style weather, sign crops, ImageNet-C corruptions
- ``models``  source architectures (with DPLOT candidate blocks), builders, safe checkpoint loading
- ``engine``  test-time adaptation methods behind one interface, streaming, benchmark
- ``ros``     thin ROS 2 nodes over the engine
"""
__version__ = "0.1.0"
