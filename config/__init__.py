"""Configuration: the typed settings object and the queue declarations."""

from config.queues import QUEUES, Queue
from config.settings import Settings, get_settings, reload_settings

__all__ = ["QUEUES", "Queue", "Settings", "get_settings", "reload_settings"]
