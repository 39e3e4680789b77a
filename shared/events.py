"""Names of the facts services dispatch on the bus (see docs/architecture.md for payloads).

Events are dispatched only after the write they report is durable; handlers must be idempotent
because an identical repeat of a write dispatches its event again (at-least-once delivery).
"""

FILE_CREATED = "file_created"
FILE_UPLOAD_ACCEPTED = "file_upload_accepted"
BUNDLE_CREATED = "bundle_created"
BUNDLE_TOMBSTONED = "bundle_tombstoned"
COLLECTION_CREATED = "collection_created"
COLLECTION_TOMBSTONED = "collection_tombstoned"
OBJECT_CHANGED = "object_changed"      # a main bucket's change notification, bridged onto the bus
OBJECT_REPLICATED = "object_replicated"  # a copy to the other replica was written and verified
BUNDLE_INDEXED = "bundle_indexed"        # a replica's index took in a bundle version or its tombstone
SUBSCRIPTION_MATCHED = "subscription_matched"  # a bundle event matched a subscription: one webhook to deliver
BUNDLE_CHECKOUT_REQUESTED = "bundle_checkout_requested"  # a bundle checkout job was accepted: copy it
FILE_CHECKOUT_REQUESTED = "file_checkout_requested"  # a blob too large to copy inline: copy it to the checkout bucket
