//! The web client's constants (`client/web/public/wire.js`) are generated from this crate:
//! this test fails when the committed file drifts. `SATSUMA_BLESS=1` rewrites it.

use std::path::PathBuf;

use satsuma_wire::js::{WEB_MODULE_PATH, web_module};
use satsuma_wire::room::close;

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
