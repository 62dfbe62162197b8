"""The worker's runtime: session state, leases, commits and the batching loop."""
