"""Model adapters. Each module defines ADAPTER, a ModelAdapter subclass, named by `adapter:` in config.yaml."""
