"""The Moshi worker: Kyutai's speech-to-speech model, several conversations batched in one process."""
