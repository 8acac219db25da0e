"""Model reloads in the background, coalesced: a storm of parameter changes costs one build after
the last, and the running model answers frames meanwhile. Only the coordination lives here (which
request is the newest, the one builder thread); what a build is and what delivering it means is the
session's (``runtime.session``)."""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional


class ReloadCoordinator:
    """One builder thread at a time builds the newest requested configuration.

    ``snapshot()``: the configuration now in force (taken when a build starts); ``build(cfg)``:
    (pipeline or None, error); ``install(cfg, new, error)``: put ``new`` in (or roll back), called
    with ``guard`` (the session's inference lock) held and only for the newest request; it returns
    what is left to do outside the locks. ``coalesced(n)`` counts requests a build answered for."""

    def __init__(self, guard: Any, snapshot: Callable[[], dict[str, Any]],
                 build: Callable[[dict[str, Any]], tuple[Any, str]],
                 install: Callable[[dict[str, Any], Any, str], Callable[[], None]],
                 coalesced: Callable[[int], None], log: Any) -> None:
        self._guard, self._snapshot, self._build, self._install = guard, snapshot, build, install
        self._coalesced, self.log = coalesced, log
        self.reloading = threading.Event()
        self._lock = threading.Lock()
        self._gen = 0
        self._wanted: Optional[int] = None  # the generation the builder should deliver
        self._thread: Optional[threading.Thread] = None
        self._why: list[str] = []
        self._serve = True  # False while falling back from CUDA out of memory

    def serving(self) -> bool:
        """Whether the running model answers frames now (always, unless a reload said not to)."""
        return not self.reloading.is_set() or self._serve

    def request(self, why: str, serve: bool = True) -> None:
        """Rebuild for the configuration now in force. A build already running finishes and is
        discarded when a newer one was asked for meanwhile. The running model answers frames
        throughout, unless ``serve`` is false (falling back from CUDA out of memory)."""
        with self._lock:
            self._gen += 1
            self._wanted = self._gen
            self._serve = serve and self._serve
            self._why.append(why)
            self.reloading.set()
            if self._thread is not None:
                return  # the builder picks the newest configuration up when its build ends
            self._thread = threading.Thread(target=self._run, name="tta_reload", daemon=True)
            self._thread.start()
        self.log.info(f"reloading the model ({why})")

    def cancel(self) -> None:
        """Forget every request (the model is being dropped): a build still running is discarded."""
        with self._lock:
            self._gen += 1
            self._wanted = None
            self._serve = True
            self.reloading.clear()

    def _run(self) -> None:
        """The builder thread: build what is wanted, deliver it unless a newer request came."""
        while True:
            with self._lock:
                gen = self._wanted
                if gen is None:  # cancelled meanwhile: nothing to deliver
                    self._thread = None
                    return
                why, self._why = self._why, []
                cfg = self._snapshot()
            if len(why) > 1:
                self._coalesced(len(why) - 1)
                self.log.info(f"{len(why)} reload requests coalesced; building the newest configuration "
                              f"(method {cfg['method']!r}, model {cfg['model']!r})")
            new, error = self._build(cfg)
            if self._deliver(gen, cfg, new, error):
                return

    def _deliver(self, gen: int, cfg: dict[str, Any], new: Any, error: str) -> bool:
        """Install ``new`` if ``gen`` is still the newest request; False: build again."""
        with self._guard, self._lock:
            if gen != self._wanted:  # superseded by a newer request, or cancelled
                if new is not None:
                    new.close()
                if self._wanted is not None:
                    self._coalesced(1)  # built for a request a newer one replaced
                    self.log.info(f"a reload was superseded before it finished (method {cfg['method']!r}): "
                                  "building the newest configuration")
                return False
            self._wanted = None
            self._thread = None
            after = self._install(cfg, new, error)
            self._serve = True
            self.reloading.clear()
        after()
        return True
