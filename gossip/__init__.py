"""The wire: identities, signed envelopes, codecs, verification, transports. Never imports peer or sim."""
