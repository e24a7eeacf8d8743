//! Just enough STUN (RFC 8489) to route a new flow: find the USERNAME attribute of a binding
//! request and take our ICE ufrag from it (`"<our ufrag>:<their ufrag>"`). Integrity is not
//! checked here; str0m checks it when the datagram reaches the session.

const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
const BINDING_REQUEST: u16 = 0x0001;

/// Why a datagram is not a routable STUN binding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a STUN header, or the length field disagrees with the datagram.
    #[error("truncated STUN message")]
    Truncated,
    /// Not STUN at all (first bits or magic cookie wrong).
    #[error("not a STUN message")]
    NotStun,
    /// STUN, but not a binding request.
    #[error("not a STUN binding request")]
    NotBindingRequest,
    /// A binding request without a usable USERNAME.
    #[error("STUN binding request without a valid USERNAME")]
    NoUsername,
}

/// Returns the local (our) ufrag of a STUN binding request.
pub fn local_ufrag(datagram: &[u8]) -> Result<&str, StunError> {
    match datagram.first() {
        None => return Err(StunError::Truncated),
        Some(b) if b & 0xC0 != 0 => return Err(StunError::NotStun),
        Some(_) => {}
    }
    if datagram.len() < HEADER_LEN {
        return Err(StunError::Truncated);
    }
    let cookie = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    if cookie != MAGIC_COOKIE {
        return Err(StunError::NotStun);
    }
    let msg_type = u16::from_be_bytes([datagram[0], datagram[1]]);
    let body_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if body_len % 4 != 0 || HEADER_LEN + body_len > datagram.len() {
        return Err(StunError::Truncated);
    }
    if msg_type != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut rest = &datagram[HEADER_LEN..HEADER_LEN + body_len];
    while rest.len() >= 4 {
        let attr_type = u16::from_be_bytes([rest[0], rest[1]]);
        let attr_len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let padded = attr_len.div_ceil(4) * 4;
        if rest.len() < 4 + padded {
            return Err(StunError::Truncated);
        }
        if attr_type == ATTR_USERNAME {
            let value = &rest[4..4 + attr_len];
            let text = std::str::from_utf8(value).map_err(|_| StunError::NoUsername)?;
            let (ours, _theirs) = text.split_once(':').ok_or(StunError::NoUsername)?;
            if ours.is_empty() {
                return Err(StunError::NoUsername);
            }
            return Ok(ours);
        }
        rest = &rest[4 + padded..];
    }
    Err(StunError::NoUsername)
}

/// STUN messages for the unit tests of the modules that route by ufrag.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{ATTR_USERNAME, BINDING_REQUEST, MAGIC_COOKIE};

    /// A binding request carrying `attrs` (type, value), each padded to 4 bytes.
    pub(crate) fn binding_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&[7; 12]);
        out.extend_from_slice(&body);
        out
    }

    /// A binding request addressed to our ICE ufrag `ufrag` (USERNAME `ufrag:remote`).
    pub(crate) fn binding_request_to(ufrag: &str) -> Vec<u8> {
        binding_request(&[(ATTR_USERNAME, format!("{ufrag}:remote").as_bytes())])
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::binding_request;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_username_after_other_attributes() {
        let msg = binding_request(&[(0x8029, &[1; 8]), (ATTR_USERNAME, b"srvU:cli")]);
        assert_eq!(local_ufrag(&msg), Ok("srvU"));
    }

    #[test]
    fn rejects_truncated_and_foreign_datagrams() {
        let msg = binding_request(&[(ATTR_USERNAME, b"abc:def")]);
        assert_eq!(local_ufrag(&msg[..10]), Err(StunError::Truncated));
        assert_eq!(
            local_ufrag(&msg[..msg.len() - 4]),
            Err(StunError::Truncated)
        );
        let mut rtp = msg.clone();
        rtp[0] = 0x80;
        assert_eq!(local_ufrag(&rtp), Err(StunError::NotStun));
        let mut resp = msg.clone();
        resp[1] = 0x01;
        resp[0] = 0x01;
        assert_eq!(local_ufrag(&resp), Err(StunError::NotBindingRequest));
        let no_colon = binding_request(&[(ATTR_USERNAME, b"abcdef")]);
        assert_eq!(local_ufrag(&no_colon), Err(StunError::NoUsername));
        let none = binding_request(&[]);
        assert_eq!(local_ufrag(&none), Err(StunError::NoUsername));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = local_ufrag(&data);
        }

        #[test]
        fn never_panics_on_mangled_requests(
            ufrag in "[a-zA-Z0-9+/]{1,32}",
            cut in 0usize..80,
            flip in 0usize..80,
            bits in any::<u8>(),
        ) {
            let user = format!("{ufrag}:peer");
            let mut msg = binding_request(&[(0x0024, &[0; 4]), (ATTR_USERNAME, user.as_bytes())]);
            if let Ok(found) = local_ufrag(&msg) {
                prop_assert_eq!(found, ufrag.as_str());
            } else {
                prop_assert!(false, "a well-formed request must parse");
            }
            let i = flip % msg.len();
            msg[i] ^= bits;
            let n = msg.len().saturating_sub(cut);
            let _ = local_ufrag(&msg[..n]);
        }
    }
}
