"""The machine: devices and precision, the self-check (doctor) and the throughput benchmark (bench)."""
