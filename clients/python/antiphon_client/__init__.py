"""Python client for the Antiphon gRPC API."""

from antiphon_client.client import AntiphonClient, Conversation
from antiphon_client.result import TurnResult
from antiphon_client.resume import Reconnect, ResumingConversation, TurnLost

__all__ = ["AntiphonClient", "Conversation", "Reconnect", "ResumingConversation", "TurnLost", "TurnResult"]
