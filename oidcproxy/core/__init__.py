"""What every layer uses: metrics counters, shared waiters, TLS contexts, error pages."""
