"""Every score of the package, computed one way (used by ``evaluate``, ``bench``, ``replay``, the
evaluator node and ``node-bench``):

- ``confusion``: the streaming confusion matrix (mIoU, pixel accuracy) and top-1 accuracy;
- ``domains``: scores per weather phase / corruption and over the whole stream;
- ``gap``: the fraction of the source-to-ceiling (oracle) gap that a method closes;
- ``stream``: predictions matched to ground truth by stamp, per phase, as CSV + JSON + plot;
- ``resize``: class-id maps resized to the labels they are scored against;
- ``intervals``: mean over seeds with its Student-t interval, paired differences of two methods;
- ``recovery``: frames until the score recovers after a weather change;
- ``flicker``: label flicker between consecutive frames (temporal consistency along the flow).

NumPy and SciPy only: nothing here imports torch or rclpy.
"""
from .confusion import Accuracy, ConfusionMatrix, frame_miou
from .domains import DomainScores, detector_purity
from .flicker import Flicker, flicker_counts
from .gap import gap_closed
from .intervals import Interval, paired_difference, t_interval
from .recovery import Recovery, frame_rows_from_csv, recovery_summary, time_to_recover
from .resize import nearest_resize
from .stream import CameraScorers, StreamScorer, format_table, id_at, plot_frame_csvs

__all__ = ["Accuracy", "CameraScorers", "ConfusionMatrix", "DomainScores", "Flicker", "Interval", "Recovery",
           "StreamScorer", "detector_purity", "flicker_counts",
           "format_table", "frame_miou", "frame_rows_from_csv", "gap_closed", "id_at", "nearest_resize",
           "paired_difference", "plot_frame_csvs", "recovery_summary", "t_interval", "time_to_recover"]
