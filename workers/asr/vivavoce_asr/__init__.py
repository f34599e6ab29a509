"""vivavoce ASR service: streaming speech recognition over WS /v1/asr (Silero VAD, Smart Turn v3, faster-whisper)."""
