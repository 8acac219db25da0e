"""The ROS-free runtime: one frame in, the outputs out. The node (``ros.tta_node``), ``replay``,
``node-bench``, ``demo`` and ``bench --stream`` all run on it, so it is testable without ROS.

- ``pipeline``: model + method + streaming adapter for one configuration (``Pipeline.infer``);
- ``frame_path``: the one path of a frame (flow, predict, fuse, per-frame records), the pipeline's
  and ``bench --stream``'s;
- ``session``: the node's state without ROS (configuration, reloads, services, diagnostics);
- ``reload``, ``counters``, ``diagnostics``: the session's coalesced rebuilds, frame counters (per
  camera) and /diagnostics (status names and keys, defined once for the node and its readers);
- ``model_loader``: the one model loader (embedded weights, checkpoints, architectures);
- ``devices``: the one device rule (``auto``, ``cpu``, ``cuda[:N]``);
- ``adapter``: the streaming-adapter wiring shared with the benchmark;
- ``preprocess`` / ``postprocess``: frames to tensors, logits to class ids, confidence, overlay;
- ``image_codec``: camera bytes + encoding (raw and compressed) to RGB, with the checks;
- ``params``: the node's parameter table, its validation and parameter files;
- ``frames`` / ``health``: the newest-frame mailbox and worker, the diagnostics statistics;
- ``state``: adapted-state files; ``messages``: topic names, stamps and the weather JSON;
- ``errors``: the one-line refusal (``ConfigError``).

Importing this package imports nothing heavy; torch and the engine load when a pipeline is built.
"""
