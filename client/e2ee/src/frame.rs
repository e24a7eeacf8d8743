//! DAVE v1.1.4 frame encryption: codec clear ranges, trailer, hash ratchet, cryptors.
