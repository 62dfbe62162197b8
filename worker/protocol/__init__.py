"""The wire protocol v1, defined once: key names, messages, audio encodings, Lua scripts."""
