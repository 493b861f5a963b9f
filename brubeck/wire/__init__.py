"""Pure wire formats: bytes in, values out, and back. Nothing here imports zmq or gevent."""
