"""An OpenAI-compatible LLM server (vLLM, Ollama, llama.cpp server, OpenAI itself) via pipecat's service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipecat.services.openai.llm import OpenAILLMService

if TYPE_CHECKING:
    from vivavoce.build_context import BuildContext
    from vivavoce.processors.catalog import OpenAIConfig


class OpenAICompatibleLLMService(OpenAILLMService):
    """pipecat's ``OpenAILLMService``, sending the system prompt as ``system``.

    Local servers often reject or ignore the ``developer`` role the templates use.
    """

    supports_developer_role = False


def create(config: OpenAIConfig, context: BuildContext) -> OpenAICompatibleLLMService:
    """Factory for the ``openai`` kind."""
    return OpenAICompatibleLLMService(
        api_key=config.api_key.get_secret_value() if config.api_key else "EMPTY",
        base_url=config.base_url,
        settings=OpenAICompatibleLLMService.Settings(
            model=config.model,
            system_instruction=context.system_prompt,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
        ),
    )
