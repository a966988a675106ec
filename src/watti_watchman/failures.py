"""Failure bookkeeping shared by every adapter: counters by reason and flood-free logging."""

import logging
from collections import Counter

from watti_watchman.clock import Clock


class FailureLog:
    """Logs the first failure of an outage at WARNING, repeats at DEBUG, and the recovery once.

    Also counts failures by reason so they can be exported as a Prometheus counter.
    """

    def __init__(self, logger: logging.Logger, clock: Clock) -> None:
        self._logger = logger
        self._clock = clock
        self.by_reason: Counter[str] = Counter()
        self._outage_started_s: float | None = None
        self._failures_in_outage = 0
        self.last_detail = ""
        """The newest failure's human detail (for tests and status)."""

    def failure(self, reason: str, detail: object = "") -> None:
        """Record one failure with a short machine-readable `reason` and a human `detail`."""
        self.by_reason[reason] += 1
        self.last_detail = str(detail)
        self._failures_in_outage += 1
        if self._outage_started_s is None:
            self._outage_started_s = self._clock()
            self._logger.warning("%s: %s (further failures logged at DEBUG)", reason, detail)
        else:
            self._logger.debug("%s: %s", reason, detail)

    def success(self, what: str = "recovered", at_s: float | None = None) -> None:
        """Record a success; ends an outage with one INFO line naming its duration (until `at_s`)."""
        if self._outage_started_s is None:
            return
        duration_s = (self._clock() if at_s is None else at_s) - self._outage_started_s
        self._logger.info("%s after %.1f s outage (%d failures)", what, duration_s, self._failures_in_outage)
        self._outage_started_s = None
        self._failures_in_outage = 0


class OnceLog:
    """Logs each distinct key once at WARNING (e.g. one line per kind of garbage payload)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def warn(self, key: str, message: str, *args: object) -> None:
        """WARNING the first time `key` is seen, DEBUG afterwards."""
        level = logging.DEBUG if key in self._seen else logging.WARNING
        self._seen.add(key)
        self._logger.log(level, message, *args)
