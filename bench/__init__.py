"""The benchmark harness: pylb side by side with haproxy, nginx and a direct connection."""
