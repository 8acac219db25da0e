"""Many bags, one configuration: ``tta-perception fleet`` replays a fleet's recordings through the
adaptation, one bag per task (each from the source state, in order within the bag, exactly as
``replay``), on a Ray cluster, a local Ray, or one after another in this process without Ray.

- ``inputs``: the bags the user named (folders, globs, list files), with stable names;
- ``cluster``: Ray, kept in one place (joining a cluster or starting a local one, resource requests,
  retries, progress) and the in-process fallback; ``bench --ray`` uses it too;
- ``task``: one bag: ``bags.replay.replay`` plus the per-bag scoring (mIoU and label flicker per
  weather phase, confusion matrices, adaptation counters, wall time, peak memory);
- ``summary``: the fleet's tables (per bag, per weather tag, overall), CSV + JSON + plots, and the
  paired comparison of methods across bags;
- ``run``: the whole run: outputs, resume, retries, progress.
"""
