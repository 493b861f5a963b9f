"""Transports: how messages reach a Brubeck application and how its replies leave.

Every transport (and brubeckservice's `ServiceConnection`) names its steps the same way:

- `process_messages(application)`: serve until `close()`;
- `accept(...) -> request | None`: check what arrived; None when it was dealt with already (garbage
  answered or dropped, a disconnect notice, a body over the limit);
- `answer(application, request)`: run the request's handler and `reply` with what it returned;
- `reply(message, response)`: send one response to the message's sender (a handler may call it later);
- `close()`.

Below them, a `Channel` hands each arriving ZeroMQ message to its `on_message` callback in the hub, and
`Mongrel2Connection.publish(sender, conn_ids, data)` sends raw bytes to Mongrel2 connections.
"""
