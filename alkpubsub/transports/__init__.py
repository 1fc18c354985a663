"""Transports: thin asyncio shells around ``alkpubsub.core``."""
