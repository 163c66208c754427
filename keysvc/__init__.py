"""keysvc: issues and verifies the API keys of the payments platform."""

__version__ = "0.1.0"
