"""vivavoce's frame processors and services; the bot-file kinds are listed in ``catalog``."""
