//! The web client's copy of this crate's constants, as a JavaScript module.
//!
//! [`web_module`] renders `client/web/public/wire.js`; the test `wire/tests/js_constants.rs`
//! fails when the committed file differs from it (run it with `SATSUMA_BLESS=1` to rewrite
//! the file) and when the web client spells a close code itself instead of importing it.

use std::fmt::Write;

use crate::realtime::api_error_code;
use crate::relay::{
    KIND_APPLICATION, KIND_COMMIT, KIND_KEY_PACKAGE, MAX_CHAT_TEXT_BYTES, SERVER_HEADER_LEN,
};
use crate::room::{
    ClientMessage, PROTOCOL_VERSION, RoomEvent, ServerMessage, close, commit_rejected, error_code,
    move_reason,
};

/// Where the generated module lives, relative to the workspace root.
pub const WEB_MODULE_PATH: &str = "client/web/public/wire.js";

fn object<V: std::fmt::Display>(out: &mut String, doc: &str, name: &str, entries: &[(&str, V)]) {
    let _ = writeln!(
        out,
        "\n/** {doc} */\nexport const {name} = Object.freeze({{"
    );
    for (k, v) in entries {
        let _ = writeln!(out, "  {k}: {v},");
    }
    out.push_str("});\n");
}

fn list(out: &mut String, doc: &str, name: &str, items: &[&str]) {
    let _ = writeln!(out, "\n/** {doc} */\nexport const {name} = Object.freeze([");
    for i in items {
        let _ = writeln!(out, "  {},", quote(i));
    }
    out.push_str("]);\n");
}

/// A JS string literal of a plain identifier-like value (the crate's names are `a-z_`).
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        match c {
            '\'' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            _ => q.push(c),
        }
    }
    q.push('\'');
    q
}

/// The text of `client/web/public/wire.js`.
pub fn web_module() -> String {
    let mut out = String::from(
        "// Generated from the satsuma-wire crate (wire/src/js.rs): do not edit by hand.\n\
         // `SATSUMA_BLESS=1 cargo test -p satsuma-wire --test js_constants` rewrites it;\n\
         // `cargo test` fails while it differs from the crate.\n",
    );
    let _ = write!(
        out,
        "\n/** `hello.v`: the coordinator protocol version. */\nexport const PROTOCOL_VERSION = {PROTOCOL_VERSION};\n"
    );
    let _ = write!(
        out,
        "\n/** Header of a server → client binary frame: `u64 seq ‖ u8 kind ‖ u64 from`. */\nexport const MLS_HEADER_LEN = {SERVER_HEADER_LEN};\n"
    );
    object(
        &mut out,
        "Binary frame kinds.",
        "KIND",
        &[
            ("KEY_PACKAGE", KIND_KEY_PACKAGE),
            ("COMMIT", KIND_COMMIT),
            ("APPLICATION", KIND_APPLICATION),
        ],
    );
    let _ = write!(
        out,
        "\n/** Longest chat text (UTF-8 bytes) a client sends. */\nexport const MAX_CHAT_TEXT_BYTES = {MAX_CHAT_TEXT_BYTES};\n"
    );
    object(
        &mut out,
        "WebSocket close codes of the coordinator.",
        "CLOSE",
        close::ALL,
    );
    let quoted = |all: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        all.iter().map(|(k, v)| (*k, quote(v))).collect()
    };
    object(
        &mut out,
        "`error.code` values.",
        "ERROR_CODE",
        &quoted(error_code::ALL),
    );
    object(
        &mut out,
        "`commit_rejected.reason` values.",
        "COMMIT_REJECTED",
        &quoted(commit_rejected::ALL),
    );
    object(
        &mut out,
        "`move.reason` values.",
        "MOVE_REASON",
        &quoted(&[
            ("DRAINING", move_reason::DRAINING),
            ("DOWN", move_reason::DOWN),
        ]),
    );
    object(
        &mut out,
        "`errorCode` values of the SFU API (an error response, or a failed entry of a `tracks/*` or `datachannels/*` reply).",
        "API_ERROR_CODE",
        &quoted(api_error_code::ALL),
    );
    list(
        &mut out,
        "`type`s of client → server messages.",
        "CLIENT_TYPES",
        ClientMessage::TYPES,
    );
    list(
        &mut out,
        "`type`s of direct replies (no `seq`); every other server text frame is a log entry.",
        "DIRECT_TYPES",
        ServerMessage::TYPES,
    );
    list(
        &mut out,
        "`type`s of the room log's JSON entries.",
        "ENTRY_TYPES",
        RoomEvent::TYPES,
    );
    out
}
