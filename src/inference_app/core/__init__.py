"""The serving core: model bundles, the registry and the runtime, free of any HTTP framework."""
