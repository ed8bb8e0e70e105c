"""The Open Inference Protocol wing: ``codec`` (the wire format, no HTTP framework) and ``routes`` (thin)."""
