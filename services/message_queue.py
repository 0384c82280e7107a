"""The integration guide's import path for the producer: ``from services.message_queue import
get_message_queue``. The producer itself is :mod:`fabric.producer`."""

from fabric.producer import MessageQueue, get_message_queue

__all__ = ["MessageQueue", "get_message_queue"]
