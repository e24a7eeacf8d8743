//! Satsuma coordinator: rooms, ordered MLS relay, auth, SFU access.
