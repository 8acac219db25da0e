"""The benchmark behind ``tta-perception bench`` and DPLOT's phase A behind ``tta-perception prepare``.

- ``variants``: method names of the benchmark (engine methods plus the paper's ablations).
- ``streams``: the test streams (embedded world: corrupted sign crops, driving sequences; public
  datasets through ``tta_perception.datasets``), cached on disk.
- ``prepare``: source data and the phase-A run that writes a DPLOT bundle.
- ``runner``: one method over one stream (metric, time per frame, peak memory).
- ``report``: tables, headline, JSON/CSV/PNG.
"""
