"""Antiphon: a low-latency gRPC server for voice and text AI agents."""
