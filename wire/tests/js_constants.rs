//! The web client's constants (`client/web/public/wire.js`) are generated from this crate:
//! this test fails when the committed file drifts. `SATSUMA_BLESS=1` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use satsuma_wire::js::{WEB_MODULE_PATH, web_module};
use satsuma_wire::room::{ClientMessage, RoomEvent, ServerMessage, close};

fn web_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

#[test]
fn web_module_is_current() {
    let path = web_file(WEB_MODULE_PATH);
    let want = web_module();
    if std::env::var_os("SATSUMA_BLESS").is_some() {
        std::fs::write(&path, &want).expect("write wire.js");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what satsuma-wire generates; rerun with SATSUMA_BLESS=1 \
         (then scripts/build-web.sh to restamp the integrity data)",
        path.display()
    );
}

/// The JavaScript that speaks the coordinator protocol takes the codes from `wire.js`
/// rather than spelling them itself (a copy would drift silently).
#[test]
fn web_client_does_not_copy_the_constants() {
    let e2ee = std::fs::read_to_string(web_file("client/web/public/e2ee-link.js")).unwrap();
    assert!(e2ee.contains("from './wire.js'") && !e2ee.contains("kind === 2"));
    for file in ["client/web/public/room-link.js"] {
        let text = std::fs::read_to_string(web_file(file)).expect("read the web client");
        assert!(
            text.contains("from './wire.js'"),
            "{file} must import its protocol constants from wire.js"
        );
        for (name, code) in close::ALL.iter().filter(|(_, c)| *c >= 4000) {
            assert!(
                !text.contains(&code.to_string()),
                "{file} spells close code {code} ({name}) itself: use CLOSE.{name} from wire.js"
            );
        }
        for literal in [
            "PROTOCOL_VERSION = ",
            "MLS_HEADER_LEN = ",
            "'commit_rejected'",
        ] {
            assert!(
                !text.contains(literal),
                "{file} defines {literal:?} itself: import it from wire.js"
            );
        }
    }
}

/// The code that talks to the SFU API takes the `errorCode` values it tests for from
/// `wire.js` (`API_ERROR_CODE`), generated from `satsuma_wire::realtime::api_error_code`.
#[test]
fn sfu_link_does_not_copy_the_api_error_codes() {
    let file = "client/web/public/sfu-link.js";
    let text = std::fs::read_to_string(web_file(file)).expect("read the web client");
    assert!(
        text.contains("API_ERROR_CODE") && text.contains("from './wire.js'"),
        "{file} must import API_ERROR_CODE from wire.js"
    );
    for (name, code) in satsuma_wire::realtime::api_error_code::ALL {
        for quoted in [format!("'{code}'"), format!("\"{code}\"")] {
            assert!(
                !text.contains(&quoted),
                "{file} spells the errorCode {quoted} itself: use API_ERROR_CODE.{name} from wire.js"
            );
        }
    }
}

/// Every coordinator message the web client's connection and controller switch on is a
/// direct reply or a log entry type the protocol knows: renaming one in the crate without
/// the client fails here. Looked at: `case 'x'` in room-link.js's frame handler and in
/// call-controller.js's `applyEntry`, and its `msg.type === 'x'` / `ev.detail.type === 'x'`.
#[test]
fn web_client_handles_only_known_server_types() {
    let room_link = std::fs::read_to_string(web_file("client/web/public/room-link.js"))
        .expect("read room-link.js");
    let controller = std::fs::read_to_string(web_file("client/web/public/call-controller.js"))
        .expect("read call-controller.js");
    let apply_entry = controller
        .split_once("\n  applyEntry(")
        .and_then(|(_, rest)| rest.split_once("\n  }\n"))
        .map(|(body, _)| body)
        .expect("call-controller.js has applyEntry");
    let mut seen = Vec::new();
    for (file, text, needles) in [
        ("room-link.js", room_link.as_str(), &["case '"][..]),
        (
            "call-controller.js applyEntry",
            apply_entry,
            &["case '"][..],
        ),
        (
            "call-controller.js",
            controller.as_str(),
            &["msg.type === '", "ev.detail.type === '"][..],
        ),
    ] {
        for needle in needles {
            for (at, _) in text.match_indices(needle) {
                let name = text[at + needle.len()..]
                    .split('\'')
                    .next()
                    .unwrap_or_default();
                assert!(
                    ServerMessage::TYPES.contains(&name) || RoomEvent::TYPES.contains(&name),
                    "{file} handles {name:?}, which the coordinator never sends"
                );
                seen.push(name.to_owned());
            }
        }
    }
    assert!(
        seen.len() >= 8,
        "found only {seen:?}: has the client's style changed?"
    );
}

/// Every message the web client sends the coordinator (`….send({ type: 'x'`) has a type the
/// protocol knows: renaming a message in the crate without the client fails here.
#[test]
fn web_client_sends_only_known_message_types() {
    let dir = web_file("client/web/public");
    let mut sent = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("list the web client") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_none_or(|e| e != "js") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        // `….send({ type: 'x'` names the message; the hello is built before it is sent.
        for (needle, fixed) in [("send({ type: '", None), ("type: 'hello'", Some("hello"))] {
            for (at, _) in text.match_indices(needle) {
                let rest = &text[at + needle.len()..];
                let name = fixed.unwrap_or_else(|| rest.split('\'').next().unwrap_or_default());
                sent.push((path.clone(), name.to_owned()));
            }
        }
    }
    assert!(
        sent.len() >= 10,
        "found only {sent:?}: has the client's style changed?"
    );
    for (path, name) in &sent {
        assert!(
            ClientMessage::TYPES.contains(&name.as_str()),
            "{} sends {name:?}, which is not a ClientMessage type",
            path.display()
        );
    }
}
