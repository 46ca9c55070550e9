"""The conversation service: many conversations over one loaded model (see
:mod:`qwen_kit.service.conversations`), and the flags its front ends share
(:mod:`qwen_kit.service.options`)."""

from qwen_kit.service.conversations import Conversation, ConversationService, ServiceConfig

__all__ = ["Conversation", "ConversationService", "ServiceConfig"]
