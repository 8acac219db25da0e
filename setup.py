"""ament_python package that also installs with plain pip (see README: Install)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "tta_perception"

ROS_WHEELS = [  # ROS 2 Kilted from PyPI, for machines without a ROS install
    "ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-sensor-msgs", "ros-std-msgs", "ros-std-srvs",
    "ros-diagnostic-msgs", "ros-lifecycle-msgs",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["weights/*.pt", "weights/*.bundle", "weights/*.json"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/sequences", glob("config/sequences/*.yaml")),
        # pip installs: put tta_node where launch_ros looks (<prefix>/lib/<package>/); colcon puts the
        # console script there itself (setup.cfg), this launcher is equivalent.
        (f"lib/{PACKAGE}", [f"{PACKAGE}/ros/bin/tta_node", f"{PACKAGE}/ros/bin/weather_camera",
                            f"{PACKAGE}/ros/bin/carla_weather", f"{PACKAGE}/ros/bin/evaluator"]),
    ],
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1", "torchvision>=0.16", "numpy>=1.21", "pyyaml>=5.4", "tqdm>=4.60",
        "matplotlib>=3.5", "scipy>=1.7", "pillow>=8", "corrupt-tta>=0.1.7",
    ],
    extras_require={
        "bags": ["rosbags>=0.10", "mcap>=1.0"],  # mcap: MCAP CRCs written and checked
        "ros": ROS_WHEELS,
        "dev": ["pytest>=7"],
    },
    zip_safe=False,
    maintainer="tta_perception developers",
    maintainer_email="dev@tta-perception.invalid",
    description="Online test-time adaptation (DPLOT and baselines) for ROS 2 camera perception.",
    license="Apache-2.0",
    tests_require=["pytest"],
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
