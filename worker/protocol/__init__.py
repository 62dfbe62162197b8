"""The wire protocol v1, defined once: key names, messages, audio encodings, Lua scripts, connections.

Everything here needs only redis, msgpack and numpy: the client install (producers, consumers,
`streamscribe produce` and `tail`) imports this package and nothing of the worker's runtime.
"""
