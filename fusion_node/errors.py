"""The exception hierarchy of the fusion system.

Exceptions are for start-up, configuration and programming errors. Bad input arriving in the hot
path (a malformed message, a NaN, a late timestamp) is never raised: it becomes a counted
:class:`fusion_node.wire.Rejection` and the stream goes on.

::

    FusionError                 base of everything raised on purpose
    ├── ConfigError             a rig config or command-line value is invalid; names the key
    ├── SensorError             a sensor backend cannot open or read its source; names the sensor
    └── ModelError              (fusion_node.manifest) a model manifest or ONNX file is unusable

Every message names the file, sensor, topic or key at fault and says what to do about it.
"""

from __future__ import annotations

__all__ = ["FusionError", "ConfigError", "SensorError"]


class FusionError(Exception):
    """Base class of the errors this project raises on purpose."""


class ConfigError(FusionError):
    """A configuration file or option is invalid; the message names the file and key."""


class SensorError(FusionError):
    """A sensor backend cannot open or read its source; the message names the sensor."""
