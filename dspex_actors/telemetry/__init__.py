"""Telemetry: dspex_actors' events, for metrics and traces (Erlang's ``:telemetry``).

The library emits named events with measurements and metadata: a checkout served, a worker
removed, a child restarted, a port's process exiting, a process-pool request or a bridge
command timed from start to stop. Attach a handler to turn them into whatever you need, or
use an exporter:

- `attach(handler_id, events, handler, config=None, *, prefix=False)`, `detach`,
  `list_handlers`; `emit`, `span` and `start_span` for your own events.
- The catalogue: `EVENTS` and one constant per event (`POOL_CHECKOUT_STOP`, `PORT_EXITED`...),
  each documented with its measurements and metadata.
- `PrometheusExporter` (extra ``prometheus``) and `OpenTelemetryExporter` (extra ``otel``).

With no handler attached, an event costs its call site one attribute read.

Example:
    >>> import dspex_actors as da
    >>> from dspex_actors import telemetry
    >>> restarts = []
    >>> telemetry.attach(
    ...     "count-restarts",
    ...     [telemetry.SUPERVISOR_CHILD_RESTARTED],
    ...     lambda event, measurements, metadata, config: restarts.append(metadata["child_id"]),
    ... )
    >>> class Worker(da.Actor):
    ...     def on_receive(self, message):
    ...         raise RuntimeError("boom")
    >>> sup = da.Supervisor.start([Worker.child_spec(id="w")])
    >>> ref = sup.which_child("w").ref
    >>> ref.tell("crash")
    >>> _ = da.wait_exit(ref, 5)
    >>> sup.count_children().active     # served after the restart: the event came first
    1
    >>> restarts
    ['w']
    >>> sup.stop()
    >>> telemetry.detach("count-restarts")
    True
"""

from .. import _telemetry
from .._telemetry import *  # noqa: F403  # the event API and its catalogue, all of it public
from ._metrics import reason_label
from ._otel import OpenTelemetryExporter
from ._prometheus import PrometheusExporter

__all__ = [  # the event API's names, then the exporters'
    *_telemetry.__all__,
    "OpenTelemetryExporter",
    "PrometheusExporter",
    "reason_label",
]
