"""What every node shares: declaring read-only parameters, publishing a status, and the ``main`` that
spins one node until shutdown (a refusal, ``runtime.errors.ConfigError``, is one line and exit 2)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from ..runtime.errors import ConfigError  # noqa: F401  (the nodes' refusals; one home: runtime.errors)


def ignore_further_signals() -> None:
    """Shutdown has begun (Ctrl-C, launch, timeout): further SIGINT/SIGTERM (a second Ctrl-C, timeout's
    signal on top of the user's) must not interrupt the clean-up halfway, which would print a
    traceback and leave threads for the C++ runtime to abort. Clean-up waits are bounded; SIGKILL
    still ends a process that hangs."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def spin_node(make_node: Callable[[], Any], name: str, args: Optional[list[str]] = None,
              finish: Callable[[Any], None] = lambda node: None) -> int:
    """``rclpy.init``, build and spin the node, and on shutdown (Ctrl-C, launch) call ``finish(node)``.

    A ``ConfigError`` while building is one line on stderr and exit status 2 (no traceback wall).
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except ConfigError as err:
        print(f"[{name}] refused: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        ignore_further_signals()
        if node is not None:
            finish(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def declare_parameters(node: Any, table: dict[str, tuple[Any, str, dict[str, Any]]]) -> dict[str, Any]:
    """Declare ``name -> (default, description, extra)`` read-only with their ranges
    (``extra['int_range'|'float_range'] = (lo, hi)``) and return the values in force; a parameter
    declared by type only and not set is left out (the caller decides what that means)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.exceptions import ParameterUninitializedException

    for name, (default, desc, extra) in table.items():
        d = ParameterDescriptor(name=name, description=desc, read_only=True)
        if "int_range" in extra:
            lo, hi = extra["int_range"]
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        if "float_range" in extra:
            lo, hi = extra["float_range"]
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        node.declare_parameter(name, default, d)
    values = {}
    for name in table:
        try:
            values[name] = node.get_parameter(name).value
        except ParameterUninitializedException:
            pass
    return values


def publish_status(node: Any, publisher: Any, status: Any) -> None:
    """Publish one ``DiagnosticStatus`` as a stamped ``DiagnosticArray`` on ``/diagnostics``."""
    from diagnostic_msgs.msg import DiagnosticArray

    arr = DiagnosticArray()
    arr.header.stamp = node.get_clock().now().to_msg()
    arr.status = [status]
    publisher.publish(arr)
