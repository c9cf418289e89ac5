"""Memory: block allocation, per-kind metadata buffers and assembly; knows no rooms."""
