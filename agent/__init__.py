"""The conversational brain, channel-agnostic: ReAct loop, LLM providers, CRM tools."""
