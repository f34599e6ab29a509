"""vivavoce's transports: the bot-file kinds are listed in ``catalog``; each kind's sessions run through ``vivavoce.session``."""
