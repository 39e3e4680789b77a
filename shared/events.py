"""Names of the facts services dispatch on the bus (see docs/architecture.md for payloads).

Events are dispatched only after the write they report is durable; handlers must be idempotent
because an identical repeat of a write dispatches its event again (at-least-once delivery).
"""

from shared.identifiers import Keys

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

# Events about one object of a main bucket, whose routing key names the object's top folder
# (``object_replicated.files``; ``shared.entrypoints.routing_key``): a handler that takes some
# folders only is bound to those, and the broker does not hand it the others (a blob and a file
# document per new file). Handlers of every folder bind ``object_replicated.#``.
ROUTED_BY_FOLDER = (OBJECT_CHANGED, OBJECT_REPLICATED)

# Every handler that consumes an event from a queue shared by all its instances:
# (source service, event, "handler service.method", the top folders of the keys it takes of a
# ROUTED_BY_FOLDER event, empty for all). Each publisher declares the queues of its own events'
# handlers, with the same bindings, before it publishes (``shared.entrypoints.EventDispatcher``), so an event
# dispatched before its handler's service ever started waits in the queue instead of being dropped
# (a topic exchange routes nothing to a queue that does not exist yet). A test keeps this table
# equal to the services' handlers. Broadcast handlers (per-instance queues of cache notes) are not here.
HANDLERS = (
    ("bundles", BUNDLE_CREATED, "indexer.handle_bundle_created", ()),
    ("bundles", BUNDLE_TOMBSTONED, "indexer.handle_bundle_tombstoned", ()),
    ("checkout", BUNDLE_CHECKOUT_REQUESTED, "checkout.handle_bundle_checkout_requested", ()),
    ("checkout", FILE_CHECKOUT_REQUESTED, "checkout.handle_file_checkout_requested", ()),
    ("files", FILE_CREATED, "checkout.handle_file_created", ()),
    ("files", FILE_UPLOAD_ACCEPTED, "files.handle_file_upload_accepted", ()),
    ("indexer", BUNDLE_INDEXED, "notifier.handle_bundle_indexed", ()),
    ("notifier", SUBSCRIPTION_MATCHED, "notifier.handle_subscription_matched", ()),
    ("replicator", OBJECT_CHANGED, "indexer.handle_object_changed", (Keys.bundle_prefix(),)),
    ("replicator", OBJECT_CHANGED, "replicator.handle_object_changed", ()),
    ("replicator", OBJECT_REPLICATED, "bundles.handle_object_replicated", (Keys.collection_prefix(),)),
    ("replicator", OBJECT_REPLICATED, "indexer.handle_object_replicated", (Keys.bundle_prefix(),)),
)
