"""Silence third-party import-time messages that say nothing to a genpolicy user and read like failures.

Each filter is for one known message, so anything else a package reports still gets through:
- robosuite logs at import that no private macro file exists and that optional robot packages (robosuite_models,
  mink) are missing, none of which the robosuite tasks here use, and on every env which controller file it loads
  and which controller parts the Panda lacks.
- pygame (imported by gym-pusht) warns that `pkg_resources` is deprecated.
- gymnasium-robotics prints (via farama_notifications) a note about the Adroit hand rewards; no Adroit task is used.
"""

from __future__ import annotations

import logging
import warnings

_ROBOSUITE_NOISE = ("No private macro file found", "It is recommended to use a private macro file",
                    "To setup, run:", "Could not import robosuite_models", "Could not load the mink-based",
                    "Loading controller configuration from", "The config has defined for the controller")
_done = False


def _not_robosuite_noise(record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not any(msg.startswith(n) for n in _ROBOSUITE_NOISE)


def quiet_third_party() -> None:
    """Install the filters (idempotent). Call before the simulators are imported."""
    global _done
    if _done:
        return
    _done = True
    # robosuite's logger is configured (handler, level) on import, but filters added beforehand stay in place
    logging.getLogger("robosuite_logs").addFilter(_not_robosuite_noise)
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated as an API", category=UserWarning)
    try:  # the notice is looked up in this dict when gymnasium_robotics is imported
        import farama_notifications

        farama_notifications.notifications.pop("gymnasium_robotics", None)
    except ImportError:
        pass
