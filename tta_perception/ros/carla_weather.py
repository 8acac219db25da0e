"""``carla_weather``: drives a CARLA server's weather through the same schedule as ``weather_camera``.

Connects with the ``carla`` Python client (imported lazily: it is only needed here, and its version
must match the server's), follows the schedule on **simulation time** (the world snapshot's
``elapsed_seconds``, which only advances when the simulation ticks, e.g. the carla-ros-bridge in
synchronous mode; or the node's clock, ``/clock`` with ``use_sim_time``), and calls
``world.set_weather`` at most ``update_rate`` (<= 10) times per simulated second and only when the
weather changed, as CARLA's own dynamic-weather example does. Publishes the weather it applied as JSON
on ``weather`` (the format of ``weather_camera``) and its state on ``/diagnostics``.

Without the ``carla`` package or without a server it does not crash-loop: it logs one clear line
saying what to install or start, reports it in diagnostics, and retries with exponential back-off
(``retry_initial`` doubling up to ``retry_max``). Connecting (which blocks up to ``timeout``) happens
on a thread, so the executor keeps serving diagnostics meanwhile.

``carla_loader`` (constructor argument) returns the ``carla`` module; tests pass a stand-in with the
same ``Client``/``WeatherParameters`` surface to exercise the no-server path and the throttling.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from .spin import ConfigError, declare_parameters, describe, format_help, publish_status, spin_node, table_help
from ..runtime.diagnostics import status_name
from ..runtime.messages import WEATHER_TOPIC, weather_json

NODE_NAME = "carla_weather"
MAX_UPDATE_RATE = 10.0  # Hz of simulation time, CARLA's dynamic_day_night_weather_cycle.py rate
INSTALL_HINT = ("the 'carla' Python package is not installed: pip install carla==<the server's version> "
                "(e.g. 0.9.16; the client must match the CARLA server) or put the CARLA PythonAPI wheel/egg "
                "on PYTHONPATH")

PARAMS: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "host": ("localhost", "CARLA server host.", {}),
    "port": (2000, "CARLA server RPC port.", {"int_range": (1, 65535)}),
    "timeout": (10.0, "Seconds to wait for the server on each connection attempt.",
                {"float_range": (0.1, 600.0)}),
    "schedule": ("dynamic", "Weather schedule: a shipped sequence name or a schedule YAML path (the "
                 "format weather_camera uses).", {}),
    "update_rate": (10.0, "set_weather calls per simulated second at most (capped at 10).",
                    {"float_range": (0.01, MAX_UPDATE_RATE)}),
    "time_source": ("carla", "carla: the world's simulation time (snapshot elapsed_seconds); ros: the "
                    "node clock (/clock with use_sim_time).", {}),
    "time_offset": (0.0, "Schedule time (s) when the node starts driving the weather.",
                    {"float_range": (0.0, 1e9)}),
    "time_scale": (1.0, "Schedule seconds per simulated second (>1 fast-forwards the weather).",
                   {"float_range": (0.001, 1000.0)}),
    "retry_initial": (1.0, "First reconnection delay (s); doubles after each failure.",
                      {"float_range": (0.01, 600.0)}),
    "retry_max": (30.0, "Longest reconnection delay (s).", {"float_range": (0.01, 3600.0)}),
    "diagnostics_period": (1.0, "Seconds between /diagnostics messages.", {"float_range": (0.05, 60.0)}),
}



def backoff_delays(initial: float, maximum: float):
    """initial, 2·initial, 4·initial, ... capped at ``maximum`` (the retry schedule)."""
    delay = float(initial)
    while True:
        yield min(delay, float(maximum))
        delay = min(delay * 2.0, float(maximum))


def default_carla_loader():
    import carla  # noqa: PLC0415 - lazily, only this node needs it

    return carla


def to_carla_weather(carla_module: Any, fields: dict[str, float]) -> tuple[Any, list[str]]:
    """A ``carla.WeatherParameters`` from our fields; fields this CARLA version lacks are returned
    (e.g. ``dust_storm`` before 0.9.14) rather than failing."""
    weather = carla_module.WeatherParameters()
    missing = []
    for key, value in fields.items():
        if hasattr(weather, key):
            setattr(weather, key, float(value))
        else:
            missing.append(key)
    return weather, missing


class CarlaWeather(Node):
    """See the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, carla_loader: Optional[Callable[[], Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.cfg = declare_parameters(self, PARAMS)
        if self.cfg["time_source"] not in ("carla", "ros"):
            raise ConfigError(f"parameter 'time_source' must be carla or ros; got {self.cfg['time_source']!r}")
        if self.cfg["update_rate"] > MAX_UPDATE_RATE or self.cfg["update_rate"] <= 0:
            raise ConfigError(f"parameter 'update_rate' must be in (0, {MAX_UPDATE_RATE:g}] Hz; "
                              f"got {self.cfg['update_rate']}")
        from tta_perception.world.schedule import load_schedule

        try:
            self.schedule = load_schedule(self.cfg["schedule"])
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"parameter 'schedule': {err}") from None
        self._loader = carla_loader or default_carla_loader
        self._lock = threading.Lock()
        self._carla: Any = None
        self._client: Any = None
        self._world: Any = None
        self.connected = threading.Event()
        self.attempts = 0
        self.failures = 0
        self.last_error = ""
        self.next_retry_at: Optional[float] = None  # time.monotonic() of the next attempt
        self.set_weather_calls = 0
        self.missing_fields: list[str] = []
        self.server_version = ""
        self.synchronous_mode: Optional[bool] = None
        self._t0: Optional[float] = None  # sim time when the schedule started
        self._last_apply_sim: Optional[float] = None
        self._last_fields: Optional[dict[str, float]] = None
        self.schedule_time = float("nan")
        self.sim_time = float("nan")
        self.domain = ""

        weather_qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                                 reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        latched = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.weather_pub = self.create_publisher(String, WEATHER_TOPIC, weather_qos)
        self.weather_latched_pub = self.create_publisher(String, WEATHER_TOPIC + "/latest", latched)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._connect_loop, name="carla_connect", daemon=True)
        self._thread.start()
        self._timer = self.create_timer(1.0 / float(self.cfg["update_rate"]), self._update)
        self._diag_timer = self.create_timer(float(self.cfg["diagnostics_period"]), self._diagnostics)

    # ------------------------------------------------------------------ connection
    def _connect_loop(self) -> None:
        delays = backoff_delays(self.cfg["retry_initial"], self.cfg["retry_max"])
        while not self._stop.is_set():
            if self.connected.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                if not self.connected.is_set():  # lost: start the back-off again
                    delays = backoff_delays(self.cfg["retry_initial"], self.cfg["retry_max"])
                continue
            self.attempts += 1
            error = self._try_connect()
            if error is None:
                continue
            self.failures += 1
            delay = next(delays)
            self.last_error = error
            self.next_retry_at = time.monotonic() + delay
            self.get_logger().error(f"{error}; retrying in {delay:g} s (attempt {self.attempts})")
            self._stop.wait(delay)
        return

    def _try_connect(self) -> Optional[str]:
        """None on success, else the one-line reason (what to install or start)."""
        host, port, timeout = self.cfg["host"], int(self.cfg["port"]), float(self.cfg["timeout"])
        try:
            carla = self._loader()
        except ImportError:
            return INSTALL_HINT
        try:
            client = carla.Client(host, port)
            client.set_timeout(timeout)
            world = client.get_world()
        except Exception as err:  # carla raises RuntimeError("time-out of ...ms while waiting ...")
            text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return (f"no CARLA server at {host}:{port} within {timeout:g} s ({text}): start the simulator "
                    f"(./CarlaUE4.sh -carla-rpc-port={port}, or CarlaUnreal.sh for CARLA 0.10) and check "
                    "host/port")
        versions = []
        for getter in ("get_client_version", "get_server_version"):
            try:
                versions.append(str(getattr(client, getter)()))
            except Exception:
                versions.append("")
        self.server_version = versions[1]
        if all(versions) and versions[0] != versions[1]:
            self.get_logger().warning(f"carla client {versions[0]} != server {versions[1]}: install the "
                                      "matching client (pip install carla==<server version>)")
        try:
            self.synchronous_mode = bool(world.get_settings().synchronous_mode)
        except Exception:
            self.synchronous_mode = None
        with self._lock:
            self._carla, self._client, self._world = carla, client, world
            self._t0 = None
            self._last_apply_sim = None
            self._last_fields = None
        self.last_error = ""
        self.next_retry_at = None
        self.connected.set()
        self.get_logger().info(f"connected to CARLA {self.server_version or '(version unknown)'} at "
                               f"{host}:{port}, synchronous mode {self.synchronous_mode}; weather follows "
                               f"schedule {self.schedule.name!r}")
        return None

    def _lost(self, err: BaseException) -> None:
        with self._lock:
            self._world = self._client = None
        self.connected.clear()
        self.last_error = f"connection to CARLA lost: {type(err).__name__}: {err}"
        self.get_logger().error(self.last_error + "; reconnecting")
        self._wake.set()

    # ------------------------------------------------------------------ weather
    def _sim_seconds(self, world: Any) -> float:
        if self.cfg["time_source"] == "carla":
            return float(world.get_snapshot().timestamp.elapsed_seconds)
        return self.get_clock().now().nanoseconds / 1e9

    def _update(self) -> None:
        """Timer: the schedule at the current simulation time; ``set_weather`` when due and changed."""
        with self._lock:
            world, carla = self._world, self._carla
        if world is None:
            return
        try:
            sim = self._sim_seconds(world)
        except Exception as err:
            self._lost(err)
            return
        if self._t0 is None:
            self._t0 = sim
        self.sim_time = sim
        min_gap = 1.0 / float(self.cfg["update_rate"])
        if self._last_apply_sim is not None and sim - self._last_apply_sim < min_gap - 1e-9:
            return  # throttled on simulation time (a paused or slow simulation gets fewer updates)
        t = float(self.cfg["time_offset"]) + float(self.cfg["time_scale"]) * (sim - self._t0)
        weather = self.schedule.weather_at(t)
        self.schedule_time, self.domain = t, self.schedule.domain_at(t)
        fields = weather.as_dict()
        applied = False
        if fields != self._last_fields:
            carla_weather, missing = to_carla_weather(carla, fields)
            try:
                world.set_weather(carla_weather)
            except Exception as err:
                self._lost(err)
                return
            if missing and missing != self.missing_fields:
                self.get_logger().warning(f"this CARLA version has no weather field(s) {missing}: ignored")
            self.missing_fields = missing
            self._last_fields = fields
            self.set_weather_calls += 1
            applied = True
        self._last_apply_sim = sim
        stamp = self.get_clock().now().nanoseconds
        text = weather_json(stamp, weather, self.domain, schedule=self.schedule.name, time=t, source="carla",
                            applied=applied, extra={"sim_time": round(sim, 6)})
        self.weather_pub.publish(String(data=text))
        self.weather_latched_pub.publish(String(data=text))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self) -> dict[str, Any]:
        retry = (max(0.0, self.next_retry_at - time.monotonic()) if self.next_retry_at is not None
                 else float("nan"))
        return {"connected": self.connected.is_set(), "host": self.cfg["host"], "port": int(self.cfg["port"]),
                "attempts": self.attempts, "failures": self.failures, "next_retry_in_s": retry,
                "last_error": self.last_error, "set_weather_calls": self.set_weather_calls,
                "server_version": self.server_version, "synchronous_mode": self.synchronous_mode,
                "sim_time": self.sim_time, "schedule_time": self.schedule_time, "domain": self.domain,
                "schedule": self.schedule.name, "missing_fields": ",".join(self.missing_fields)}

    def _diagnostics(self) -> None:
        d = self.diagnostics()
        if d["connected"]:
            level, message = DiagnosticStatus.OK, f"weather {d['domain'] or '-'} at t={d['schedule_time']:.1f} s"
            if d["synchronous_mode"] is False:
                level, message = DiagnosticStatus.WARN, message + " (server not in synchronous mode)"
        else:
            level, message = DiagnosticStatus.ERROR, d["last_error"] or "connecting"
        status = DiagnosticStatus(level=level, name=status_name(self.get_fully_qualified_name()),
                                  message=message, hardware_id=f"carla://{d['host']}:{d['port']}")
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in d.items()]
        publish_status(self, self.diag_pub, status)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def _help_text() -> str:
    """``carla_weather --help``: the parameters from ``PARAMS`` (the table that declares them)."""
    return format_help(NODE_NAME, describe(__doc__), table_help(PARAMS), sections=(
        ("topics out", [f"{WEATHER_TOPIC}, {WEATHER_TOPIC}/latest (std_msgs/String JSON, the weather applied; "
                        "/latest latched)",
                        "/diagnostics (diagnostic_msgs/DiagnosticArray)"]),
        ("needs", ["the 'carla' Python package matching the server, and a CARLA server at host:port "
                   "(retried with back-off until then)"]),
    ))


def main(args: Optional[list[str]] = None) -> int:
    """``ros2 run tta_perception carla_weather``; ``-h``/``--help`` prints the parameters without
    initialising rclpy."""
    return spin_node(CarlaWeather, "carla_weather", args, finish=lambda node: node.stop(),
                     help_text=_help_text)

if __name__ == "__main__":
    sys.exit(main())
