"""Every score of the package, computed one way (used by ``evaluate``, ``bench``, ``replay``, the
evaluator node and ``node-bench``):

- ``confusion``: the streaming confusion matrix (mIoU, pixel accuracy) and top-1 accuracy;
- ``domains``: scores per weather phase / corruption and over the whole stream;
- ``stream``: predictions matched to ground truth by stamp, per phase, as CSV + JSON + plot;
- ``resize``: class-id maps resized to the labels they are scored against.

NumPy only: nothing here imports torch or rclpy.
"""
from .confusion import Accuracy, ConfusionMatrix, frame_miou
from .domains import DomainScores, detector_purity
from .resize import nearest_resize
from .stream import StreamScorer, format_table, plot_frame_csvs

__all__ = ["Accuracy", "ConfusionMatrix", "DomainScores", "detector_purity", "StreamScorer", "format_table", "frame_miou",
           "nearest_resize", "plot_frame_csvs"]
