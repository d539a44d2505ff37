"""The error of a bad run configuration (config.py raises it; lower modules such as
models/backbones.py raise it too without importing config.py)."""


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key. ``problems``: every
    problem found (one line each, each naming its key); the message joins them."""

    def __init__(self, message: str | list[str]):
        self.problems = [message] if isinstance(message, str) else list(message)
        super().__init__("\n".join(self.problems))
