"""Transports: how messages reach a Brubeck application and how its replies leave."""
