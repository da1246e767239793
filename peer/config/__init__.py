"""peer.toml: its settings (dataclasses with defaults), parsing and checks, the commented example."""
