"""vivavoce's transports: the bot-file kinds are listed in ``catalog``; every session runs in ``vivavoce.session``."""
