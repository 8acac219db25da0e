"""Every score of the package, computed one way (used by ``evaluate``, ``bench``, ``replay``, the
evaluator node and ``node-bench``):

- ``confusion``: the streaming confusion matrix (mIoU, pixel accuracy) and top-1 accuracy;
- ``domains``: scores per weather phase / corruption and over the whole stream;
- ``gap``: the fraction of the source-to-ceiling (oracle) gap that a method closes;
- ``stream``: predictions matched to ground truth by stamp, per phase, as CSV + JSON + plot;
- ``resize``: class-id maps resized to the labels they are scored against.

NumPy only: nothing here imports torch or rclpy.
"""
from .confusion import Accuracy, ConfusionMatrix, frame_miou
from .domains import DomainScores
from .gap import gap_closed
from .resize import nearest_resize
from .stream import StreamScorer, format_table, plot_frame_csvs

__all__ = ["Accuracy", "ConfusionMatrix", "DomainScores", "StreamScorer", "format_table", "frame_miou",
           "gap_closed", "nearest_resize", "plot_frame_csvs"]
