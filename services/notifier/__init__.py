"""The notifier service (skeleton).

Owns subscriptions and delivers signed webhooks for matching bundle events, with durable retries. Arrives with issue 4.
"""
