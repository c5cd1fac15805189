"""avatarcast: a real-time streaming avatar server driven by any voice."""

__version__ = "0.1.0"
