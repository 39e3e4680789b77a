"""Bundle checkout jobs, one of the checkout service's two parts: a bundle version copied,
verified, into the checkout bucket or a bucket the operator allowed, its job durable in the
checkout bucket, and an e-mail to the caller when it ends.

- ``jobs``: the job store and runner (``CheckoutJobsAPI``; the record is described there);
- ``mail``: e-mail through an SMTP relay (``Mailer``); ``mail_quota``: at most
  ``DSS_CHECKOUT_MAIL_PER_HOUR`` notices per caller, counted durably.

GET /bundles with presigned or direct URLs is served by a job of this kind too.
"""
