"""Every benchmark, each writing the same report format (``output``: table as text and Markdown,
JSON, CSV, plots):

- the paper's protocol behind ``tta-perception bench`` (batch and ``--stream``) and DPLOT's phase A
  behind ``tta-perception prepare``:
  ``variants`` (method names: engine methods plus the paper's ablations), ``streams`` (the test
  streams: corrupted sign crops, driving sequences, public datasets; cached on disk), ``prepare``
  (source data and the phase-A run that writes a bundle), ``runner`` (one method over one stream:
  metric, time per frame, peak memory), ``report`` (tables, headline, CSV, plots), ``suite`` (the
  whole run), ``common`` (caches, memory, machine);
- ``node``: ``tta-perception node-bench``, the node end to end over DDS (its DDS side is
  ``ros.node_bench``);
- ``gpu``: ``python -m tta_perception.bench.gpu``, every method's cost on the deployment workloads.
"""
