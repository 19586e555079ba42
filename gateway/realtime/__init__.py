"""Live updates for the portal: a websocket per page (/ws/live/), fed after commit.

- groups.py: group names (tenant and label digest; per user; per tenant for control messages)
- events.py: what the engine and services publish, scheduled with transaction.on_commit
- publisher.py: the sender thread, so publishing never sits in a transaction's path
- relay.py: the embedded default's way from a worker process to the server's in-memory layer
- consumer.py: the socket: authentication, groups from the scoped selectors, rechecks
"""
