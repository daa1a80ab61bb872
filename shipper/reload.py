"""Hot reload of the configuration, on SIGHUP and when the configuration file changes (polled).

Owns which options a running shipper takes in and how:
- the options declared `Reloadable` in config.py are applied: the running components are handed
  the new settings (`apply`) and read them from their next cycle on;
- any other option that differs keeps its running value, with a warning naming it ("needs a restart");
- a file that cannot be read or does not validate is logged as an error and counted in
  `config_reload_failures_total`; the running configuration stays as it is.
`config_generation` counts the reloads that changed something.

The new settings are built as at start (environment over the file over defaults), so an option
set in the environment cannot be changed by the file here either. A change of the file is taken
once its metadata has been the same for two polls, so a file being written is not read half-way
(a Kubernetes ConfigMap volume changes by an atomic rename; an editor may not).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .config import ConfigError, RedactionRule, Settings, iter_options, load_settings, reloadable_options
from .metrics import Metrics

log = logging.getLogger("shipper.reload")

# The reloading section of docs/configuration.md (config.reference_markdown).
REFERENCE = [
    "## Reloading",
    "",
    "On SIGHUP, and when the file named by `SHIPPER_CONFIG_FILE` (`--config`) changes (checked every "
    "`config_poll_interval_s`), the shipper reads its configuration again (shipper/reload.py). Options marked "
    "*Reloadable* take effect: source globs at the next discovery (a file that stops matching is closed and "
    "keeps its position; one that starts matching is read from its saved position, or from its start, as at "
    "a restart), label and annotation filters, the namespace selector and the body stage (redaction, "
    "correlation ids, JSON fields) from the next lines read, `enrich.topic_annotation_allow` for chains first "
    "read after it, the log level at once. Any other option that "
    "differs is logged (\"needs a restart\") and keeps its running value. A file that does not validate is "
    "logged and counted in `audit_shipper_config_reload_failures_total`, and the running configuration stays. "
    "`audit_shipper_config_generation` counts the reloads applied. (The Helm chart mounts the file with "
    "`subPath` and rolls the pods on a change instead.)",
]


def option_values(settings: Settings) -> dict[str, Any]:
    """Every leaf option (as docs/configuration.md lists them) and its value."""
    values: dict[str, Any] = {}
    for name, _kind, _default, _description in iter_options():
        value: Any = settings
        for part in name.split("."):
            value = getattr(value, part)
        values[name] = value
    return values


def merge(running: Settings, loaded: Settings) -> tuple[Settings, list[str], list[str]]:
    """(the settings to run with, options applied, options that differ but need a restart)."""
    reloadable = reloadable_options()
    old, new = option_values(running), option_values(loaded)
    applied = [name for name in old if old[name] != new[name] and name in reloadable]
    needs_restart = [name for name in old if old[name] != new[name] and name not in reloadable]
    merged = running
    for name in applied:
        merged = _with_option(merged, name.split("."), new[name])
    return merged, applied, needs_restart


def _with_option(model: BaseModel, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return model.model_copy(update={path[0]: value})
    return model.model_copy(update={path[0]: _with_option(getattr(model, path[0]), path[1:], value)})


def _shown(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], RedactionRule):
        return "[" + ", ".join(rule.name for rule in value) + "]"
    text = repr(getattr(value, "value", value))
    return text if len(text) <= 200 else text[:200] + "..."


class ConfigReloader:
    """Reloads `config_file` into the running settings; `apply(settings)` hands them to the components
    (called from a worker thread: what it swaps must be safe to swap under the readers)."""

    def __init__(self, settings: Settings, config_file: str | None, metrics: Metrics,
                 apply: Callable[[Settings], None]) -> None:
        self.settings = settings
        self.config_file = config_file
        self.metrics = metrics
        self.apply = apply
        self.generation = 0
        self._loaded_state = self.file_state()    # about the file `settings` came from

    def reload(self, why: str) -> bool:
        """Blocking (reads and validates the file). True when something was applied."""
        if not self.config_file:
            log.info("%s: no configuration file to reload (shipper run without --config / SHIPPER_CONFIG_FILE)",
                     why)
            return False
        try:
            loaded = load_settings(self.config_file)
        except ConfigError as exc:
            return self._failed(why, str(exc))
        except Exception as exc:  # noqa: BLE001 - no file content may stop the shipper
            return self._failed(why, f"{type(exc).__name__}: {exc}")
        merged, applied, needs_restart = merge(self.settings, loaded)
        old, new = option_values(self.settings), option_values(loaded)
        for name in needs_restart:
            log.warning("configuration reload (%s): %s changed (%s -> %s) but needs a restart; keeping %s", why,
                        name, _shown(old[name]), _shown(new[name]), _shown(old[name]))
        if not applied:
            log.info("configuration reload (%s): nothing to apply", why)
            return False
        try:
            self.apply(merged)
        except Exception as exc:  # noqa: BLE001 - a reload must not stop the shipper
            self.metrics.config_reload_failures.inc()
            log.exception("configuration reload (%s): applying failed part-way (%s)", why, exc)
            return False
        self.settings = merged
        self.generation += 1
        self.metrics.config_generation.set(self.generation)
        log.info("configuration reload (%s): applied %s (generation %d)", why, ", ".join(applied), self.generation)
        return True

    def _failed(self, why: str, message: str) -> bool:
        self.metrics.config_reload_failures.inc()
        log.error("configuration reload (%s) failed; the running configuration stays: %s", why, message)
        return False

    def file_state(self) -> tuple[int, int, int, int] | None:
        """What tells a changed file: device, inode (a ConfigMap's rename), mtime and size."""
        if not self.config_file:
            return None
        try:
            info = os.stat(self.config_file)
        except OSError:
            return None
        return info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size

    async def run(self, hangup: asyncio.Event, poll_interval_s: float, ready: Callable[[], bool]) -> None:
        """Reload on each `hangup` (SIGHUP) and on a settled change of the file, until cancelled.
        Nothing is applied before `ready()` (the components exist); a SIGHUP meanwhile waits."""
        while not ready():
            await asyncio.sleep(0.1)
        seen = changed_to = self._loaded_state
        while True:
            try:
                await asyncio.wait_for(hangup.wait(), poll_interval_s if poll_interval_s > 0 else None)
            except TimeoutError:
                pass
            why = ""
            if hangup.is_set():
                hangup.clear()
                seen = changed_to = self.file_state()
                why = "SIGHUP"
            else:
                state = self.file_state()
                if state == seen:
                    changed_to = seen
                elif state != changed_to:
                    changed_to = state          # changed: taken once it stays so for one more poll
                else:
                    seen = state
                    why = "the file changed"
            if why:
                try:
                    await asyncio.to_thread(self.reload, why)
                except Exception:  # noqa: BLE001 - reloading must go on working after any surprise
                    self.metrics.config_reload_failures.inc()
                    log.exception("configuration reload (%s) failed", why)
