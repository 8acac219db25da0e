"""Every score of the package, computed one way (used by ``evaluate``, ``bench``, ``replay``, the
evaluator node and ``node-bench``):

- ``confusion``: the streaming confusion matrix (mIoU, pixel accuracy) and top-1 accuracy;
- ``domains``: scores per weather phase / corruption and over the whole stream;
- ``stream``: predictions matched to ground truth by stamp, per phase, as CSV + JSON + plot;
- ``resize``: class-id maps resized to the labels they are scored against;
- ``intervals``: mean over seeds with its Student-t interval, paired differences of two methods;
- ``recovery``: frames until the score recovers after a weather change.

NumPy and SciPy only: nothing here imports torch or rclpy.
"""
from .confusion import Accuracy, ConfusionMatrix, frame_miou
from .domains import DomainScores, detector_purity
from .intervals import Interval, paired_difference, t_interval
from .recovery import Recovery, frame_rows_from_csv, time_to_recover
from .resize import nearest_resize
from .stream import StreamScorer, format_table, plot_frame_csvs

__all__ = ["Accuracy", "ConfusionMatrix", "DomainScores", "Interval", "detector_purity", "Recovery", "StreamScorer", "format_table",
           "frame_miou", "frame_rows_from_csv", "nearest_resize", "paired_difference", "plot_frame_csvs",
           "t_interval", "time_to_recover"]
