"""Class names of the public benchmarks (index order of their labels and of the public checkpoints)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# CIFAR-100 "fine" labels, alphabetical as in the dataset's meta file
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
    "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
    "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm",
)

# CarlaTTA's 14 training classes (GTTA), index = train id
CARLA_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                 "vegetation", "terrain", "sky", "person", "vehicle", "road line")

# CARLA semantic-tag id (red channel of CarlaTTA's segmentation PNGs) -> train id; others -> 255
CARLA_TAG_TO_TRAIN_ID = {7: 0, 8: 1, 1: 2, 11: 3, 2: 4, 5: 5, 18: 6, 12: 7, 9: 8, 22: 9, 13: 10, 4: 11,
                         10: 12, 6: 13}


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k (ILSVRC-2012) names in label order: the committed ``imagenet_classes.txt`` beside
    this module, one name per line (0 tench, 281 tabby, 504 coffee mug, 999 toilet tissue; the two
    cranes and the two maillots told apart as in torchvision's weight metadata)."""
    names = tuple(Path(__file__).with_name("imagenet_classes.txt").read_text(encoding="utf-8").splitlines())
    if len(names) != 1000:
        raise ValueError(f"imagenet_classes.txt holds {len(names)} names, not 1000")
    return names
