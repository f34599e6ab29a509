"""Hang up and transfer a live call, offered to the LLM as tools (Twilio REST API via the twilio SDK).

Hanging up ends the pipeline; pipecat's serializer then completes the call through the REST API.
Transferring redirects the live call with ``<Dial>`` TwiML, which also ends its media stream.
An LLM that cannot call tools (the embedded SmolLM2) simply never uses them.
"""

from __future__ import annotations

from typing import Any

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import EndWorkerFrame, FunctionCallResultProperties
from pipecat.services.llm_service import FunctionCallParams, LLMService
from twilio.twiml.voice_response import VoiceResponse

END_CALL = FunctionSchema(
    name="end_call",
    description="Hang up the phone call. Use it when the caller says goodbye or asks to end the call.",
    properties={},
    required=[],
)
TRANSFER_CALL = FunctionSchema(
    name="transfer_call",
    description="Transfer the caller to a human. Use it when the caller asks for a person or an agent.",
    properties={},
    required=[],
)


class TwilioCallControl:
    """REST operations on one call (``call_sid``)."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        call_sid: str,
        api_base_url: str | None = None,
        transfer_to: str | None = None,
    ):
        """Control ``call_sid``; ``api_base_url`` points the SDK at a Twilio-compatible API (tests)."""
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._call_sid = call_sid
        self._api_base_url = api_base_url
        self.transfer_to = transfer_to

    def _client(self) -> Any:
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        client = Client(self._account_sid, self._auth_token, http_client=AsyncTwilioHttpClient())
        if self._api_base_url:
            client.api.base_url = self._api_base_url.rstrip("/")
        return client

    async def transfer(self, number: str | None = None) -> None:
        """Redirect the call to ``number`` (default: the bot file's ``transfer_to``)."""
        target = number or self.transfer_to
        if not target:
            raise ValueError("no number to transfer to (transport.transfer_to)")
        twiml = VoiceResponse()
        twiml.dial(target)
        client = self._client()
        try:
            await client.calls(self._call_sid).update_async(twiml=str(twiml))
        finally:
            await client.http_client.close()
        logger.info(f"Call {self._call_sid} transferred to {target}")

    def offer_tools(self, conversation: Any) -> None:
        """Register ``end_call`` (and ``transfer_call`` when a number is set) with the conversation's LLM."""
        llm = next((p for p in conversation.processors.values() if isinstance(p, LLMService)), None)
        if llm is None:
            return
        tools = [END_CALL]
        llm.register_function("end_call", self._on_end_call)
        if self.transfer_to:
            tools.append(TRANSFER_CALL)
            llm.register_function("transfer_call", self._on_transfer_call)
        conversation.context.set_tools(ToolsSchema(standard_tools=tools))

    async def _on_end_call(self, params: FunctionCallParams) -> None:
        # No reply after the tool: the call ends now, not after one more spoken sentence.
        await params.result_callback({"status": "hanging up"}, properties=FunctionCallResultProperties(run_llm=False))
        # Ending the pipeline makes pipecat's serializer complete the call through the REST API.
        await params.llm.push_frame(EndWorkerFrame(reason="the assistant ended the call"))

    async def _on_transfer_call(self, params: FunctionCallParams) -> None:
        try:
            await self.transfer()
        except Exception as e:
            logger.error(f"Call {self._call_sid}: transfer failed: {e}")
            await params.result_callback({"status": "transfer failed", "error": str(e)})
            return
        await params.result_callback({"status": "transferred"})
