"""What the core counts for the runtime's metrics and logs."""
