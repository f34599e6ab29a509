"""vivavoce's Chatterbox worker: chatterbox-streaming behind the vivavoce worker protocol."""
