"""Python client for the Antiphon gRPC API."""

from antiphon_client.client import AntiphonClient, Conversation, TurnResult

__all__ = ["AntiphonClient", "Conversation", "TurnResult"]
