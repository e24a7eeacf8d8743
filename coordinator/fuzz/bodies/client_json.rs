//! Fuzz body: the coordinator's WebSocket JSON decoders on hostile text.
//!
//! Shared by the cargo-fuzz target `client_json` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/client_json/` through it.
//!
//! Client → server: [`ClientMessage::decode`] (what the coordinator runs on every text
//! frame). A decoded message re-encodes to JSON that decodes to the same message and
//! carries its `type`; a refusal is typed: an unknown `type` only when the text is an
//! object whose `type` is no known name, and `refused` names a known type only when the
//! text carries it. Server → client: [`ServerText::decode`] (what clients run), with the
//! same round trip.

use satsuma_coordinator::protocol::{ClientDecodeError, ClientMessage, ServerText, error_code};

pub(crate) fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        // WebSocket text frames are UTF-8 (the transport refuses anything else).
        return;
    };
    // The `type` the text carries, read as leniently as the decoder reads it for its
    // refusal (other fields skipped unchecked: a lone surrogate in one of them makes
    // the text invalid JSON for `serde_json::Value`, but it still names its type).
    #[derive(serde::Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        ty: String,
    }
    let tag = serde_json::from_str::<Tagged>(text).ok().map(|t| t.ty);

    match ClientMessage::decode(text) {
        Ok(m) => {
            let name = m.type_name();
            assert!(ClientMessage::TYPES.contains(&name));
            assert_eq!(tag.as_deref(), Some(name));
            let json = match serde_json::to_value(&m) {
                Ok(v) => v,
                Err(e) => panic!("{m:?} does not encode: {e}"),
            };
            assert_eq!(json.get("type").and_then(|t| t.as_str()), Some(name));
            let again = ClientMessage::decode(&json.to_string());
            assert_eq!(again.as_ref(), Ok(&m));
        }
        Err(e) => {
            match &e {
                ClientDecodeError::UnknownType(shown) => {
                    let Some(tag) = &tag else {
                        panic!("unknown type without a type: {text}")
                    };
                    assert!(!ClientMessage::TYPES.contains(&tag.as_str()));
                    assert!(shown.chars().count() <= 41);
                    assert!(tag.starts_with(shown.trim_end_matches('…')));
                    assert_eq!(e.code(), error_code::UNKNOWN_TYPE);
                }
                ClientDecodeError::Malformed { refused, detail } => {
                    assert!(!detail.is_empty());
                    if let Some(r) = refused {
                        assert_eq!(tag.as_deref(), Some(*r));
                    }
                    assert_eq!(e.code(), error_code::MALFORMED);
                }
            }
            assert!(!e.to_string().is_empty());
        }
    }

    if let Ok(s) = ServerText::decode(text) {
        let json = match &s {
            ServerText::Event(f) => serde_json::to_string(f),
            ServerText::Direct(m) => serde_json::to_string(m),
        };
        let json = json.unwrap_or_else(|e| panic!("{s:?} does not encode: {e}"));
        match ServerText::decode(&json) {
            Ok(back) => assert_eq!(back, s),
            Err(e) => panic!("{json} (from {text}) does not decode: {e}"),
        }
    }
}
