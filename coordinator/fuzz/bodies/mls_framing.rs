//! Fuzz body: the coordinator's MLS framing reader (`mls_framing`) on hostile bytes.
//!
//! Shared by the cargo-fuzz target `mls_framing` and by `tests/fuzz_corpus.rs`, which
//! replays every file of `fuzz/corpus/mls_framing/` through it.
//!
//! Invariants: nothing panics; the parsers agree with each other (a full commit is also
//! a commit header, a KeyPackage message is also of wire format KeyPackage); whatever
//! parses re-encodes (with `mls_framing::build`) to bytes that parse to the same
//! values; an accepted commit or KeyPackage is consumed exactly (no strict prefix
//! parses).

use satsuma_coordinator::mls_framing::{
    self, AddedKeyPackage, CommitError, ContentType, FramingError, MAX_GROUP_ID_LEN, MAX_PROPOSALS,
    WireFormat, build,
};

const FORMATS: [WireFormat; 5] = [
    WireFormat::PublicMessage,
    WireFormat::PrivateMessage,
    WireFormat::Welcome,
    WireFormat::GroupInfo,
    WireFormat::KeyPackage,
];

pub(crate) fn run(data: &[u8]) {
    let header = mls_framing::parse_header(data);
    let commit = mls_framing::parse_commit(data);
    let public = mls_framing::parse_public_commit(data);
    let key_package = mls_framing::parse_key_package_message(data);

    // The header reader.
    match &header {
        Ok(h) => {
            assert_eq!(
                h.framed.is_some(),
                matches!(
                    h.wire_format,
                    WireFormat::PublicMessage | WireFormat::PrivateMessage
                )
            );
            if let Some(f) = &h.framed {
                assert!(f.group_id.len() <= MAX_GROUP_ID_LEN);
            }
            for wf in FORMATS {
                let expected = mls_framing::expect_wire_format(data, wf);
                assert_eq!(expected.is_ok(), wf == h.wire_format, "{wf:?} vs {h:?}");
                if let Err(e) = expected {
                    assert!(
                        matches!(e, FramingError::UnexpectedWireFormat { got, .. } if got == h.wire_format)
                    );
                }
            }
        }
        Err(e) => {
            for wf in FORMATS {
                assert_eq!(mls_framing::expect_wire_format(data, wf).as_ref(), Err(e));
            }
            assert_eq!(commit.as_ref().err(), Some(e));
        }
    }

    // The commit header reader is the header reader plus "is a commit".
    match (&commit, &header) {
        (Ok(c), Ok(h)) => {
            assert_eq!(c.content_type, ContentType::Commit);
            assert_eq!(h.framed.as_ref(), Some(c));
        }
        (Ok(_), Err(_)) => panic!("a commit without a header"),
        (Err(FramingError::NotCommit(ct)), Ok(h)) => {
            assert_ne!(*ct, ContentType::Commit);
            assert_eq!(h.framed.as_ref().map(|f| f.content_type), Some(*ct));
        }
        (Err(FramingError::UnexpectedWireFormat { got, .. }), Ok(h)) => {
            assert_eq!(*got, h.wire_format);
            assert!(h.framed.is_none());
        }
        (Err(e), Ok(h)) => panic!("header {h:?} parses but the commit reader says {e:?}"),
        (Err(_), Err(_)) => {}
    }

    // The full commit reader.
    match &public {
        Ok(p) => {
            let Ok(h) = &commit else {
                panic!("a full commit whose header does not parse: {commit:?}")
            };
            assert_eq!((&h.group_id, h.epoch), (&p.group_id, p.epoch));
            assert!(matches!(
                header.as_ref().map(|h| h.wire_format),
                Ok(WireFormat::PublicMessage)
            ));
            assert!(p.adds.len() + p.removes.len() <= MAX_PROPOSALS);
            check_consumed_exactly(data, |b| mls_framing::parse_public_commit(b).is_ok());
            for add in &p.adds {
                check_key_package(add);
            }
            // Re-encode what was read; it must read back the same.
            let kps: Vec<Vec<u8>> = p.adds.iter().map(|a| a.key_package.clone()).collect();
            let rebuilt = build::commit(&p.group_id, p.epoch, p.sender_leaf, 7, &kps, &p.removes);
            match mls_framing::parse_public_commit(&rebuilt) {
                Ok(again) => {
                    assert_eq!(again.group_id, p.group_id);
                    assert_eq!(again.epoch, p.epoch);
                    assert_eq!(again.sender_leaf, p.sender_leaf);
                    assert_eq!(again.adds, p.adds);
                    assert_eq!(again.removes, p.removes);
                }
                Err(e) => panic!("a re-encoded commit does not parse: {e}"),
            }
        }
        Err(CommitError::Framing(e)) => {
            // The full reader refuses no header the header reader accepts, except
            // for what only it checks (content type, trailing data...).
            if let Err(he) = &header {
                assert_eq!(e, he);
            }
        }
        Err(_) => {}
    }

    // The KeyPackage message reader.
    if let Ok(kp) = &key_package {
        assert!(matches!(
            header.as_ref().map(|h| h.wire_format),
            Ok(WireFormat::KeyPackage)
        ));
        assert_eq!(Some(&kp.key_package[..]), data.get(4..));
        check_key_package(kp);
        check_consumed_exactly(data, |b| mls_framing::parse_key_package_message(b).is_ok());
        // A commit adding it carries it byte for byte.
        let commit = build::commit(b"fuzz", 1, 0, 1, std::slice::from_ref(&kp.key_package), &[]);
        match mls_framing::parse_public_commit(&commit) {
            Ok(c) => assert_eq!(c.adds, vec![kp.clone()]),
            Err(e) => panic!("a commit adding a parsed KeyPackage does not parse: {e}"),
        }
    }
}

/// A KeyPackage the commit reader returned parses as a logged KeyPackage message.
fn check_key_package(add: &AddedKeyPackage) {
    let logged = build::message(WireFormat::KeyPackage, &add.key_package);
    assert_eq!(
        mls_framing::parse_key_package_message(&logged).as_ref(),
        Ok(add)
    );
}

/// No strict prefix of accepted input is accepted (the readers consume exactly).
fn check_consumed_exactly(data: &[u8], accepts: impl Fn(&[u8]) -> bool) {
    // Every prefix would be quadratic; the last few bytes and a spread of cuts do.
    let n = data.len();
    let cuts = (n.saturating_sub(8)..n).chain((0..n).step_by((n / 16).max(1)));
    for cut in cuts {
        assert!(
            !accepts(&data[..cut]),
            "a {cut}-byte prefix of {n} bytes parses"
        );
    }
}
