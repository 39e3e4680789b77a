"""The notifier service: owns subscriptions (per replica, in the main bucket under
``subscriptions/``) and delivers signed webhooks for matching bundle events, with durable retries.
See service.py."""
