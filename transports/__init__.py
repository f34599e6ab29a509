"""vivavoce's transports: the file transport (tests, headless runs) and factories for pipecat's own."""
