//! The openmls wrapper: one MLS group per room, identities are participant ids.
