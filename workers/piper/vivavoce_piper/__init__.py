"""vivavoce's Piper worker: piper-tts voices behind the vivavoce worker protocol, on the CPU."""
