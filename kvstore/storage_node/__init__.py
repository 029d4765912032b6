"""Storage node: the pure timestamp-ordering partition core and its storage engines."""
