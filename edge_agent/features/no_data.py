"""Why a feature's indicator is "no data": the trace reason codes it publishes, and one log line per device and reason.

A feature that cannot compute an honest number publishes NaN and a `reason` field holding the
`TraceReason` code (0 = computed), and says why once in the log, not at every cycle.
"""

from __future__ import annotations

import logging

from edge_agent.core.traces import REASON_TEXT, TraceReason

#: Reason codes of the features beyond the core's TraceReason (which ends below 16).
SKIPPED_CYCLES = 16
"""The cycle counter moved by more than one: what was read spans several cycles (a load, a weld)."""
COUNTER_RESET = 17
"""A counter the indicator needs went backwards (reset, make-up): the difference means nothing."""
FEATURE_REASON_TEXT = {
    SKIPPED_CYCLES: "the cycle counter skipped cycles: the values read span several of them",
    COUNTER_RESET: "a counter went backwards (reset or make-up)",
}


class NoDataLog:
    """Logs each (device, reason) once: the first time a device's indicator is "no data" for that reason."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self._said: set[tuple[str, str]] = set()

    def reason(self, device: str, code: int, detail: str = "") -> None:
        """Log why the device's indicator is NaN, once per device and reason code; OK (0) logs nothing."""
        if code == TraceReason.OK or not self._first(device, f"reason {int(code)}"):
            return
        if code in FEATURE_REASON_TEXT:
            name, text = (
                {SKIPPED_CYCLES: "SKIPPED_CYCLES", COUNTER_RESET: "COUNTER_RESET"}[code],
                FEATURE_REASON_TEXT[code],
            )
        else:
            try:
                name, text = TraceReason(code).name, REASON_TEXT[TraceReason(code)]
            except ValueError:
                name, text = str(code), "unknown reason"
        self.logger.warning(
            "%s: %s not computed, published as NaN with reason=%d (%s: %s)%s; logged once",
            device,
            self.what,
            int(code),
            name,
            text,
            f"; {detail}" if detail else "",
        )

    def once(self, device: str, key: str, message: str, *args: object) -> None:
        """Log a warning once per device and key (e.g. a counter that skipped cycles)."""
        if self._first(device, key):
            self.logger.warning("%s: " + message, device, *args)

    def _first(self, device: str, key: str) -> bool:
        if (device, key) in self._said:
            return False
        self._said.add((device, key))
        return True
