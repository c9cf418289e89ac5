"""The adapter against the released SGLang interface."""
