//! Known-answer tests: MLS `crypto-basics.json` (cipher suite 1) for the
//! ratchet's KDF pieces, and the libdave vectors for displayable codes, codec
//! clear ranges and trailer parsing. Vectors live in `tests/vectors/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use satsuma_e2ee::frame::ratchet::{derive_secret, derive_tree_secret, expand_with_label};
use satsuma_e2ee::frame::{BaseSecret, Codec, Encryptor, FrameLayout, ProtocolFrame};
use satsuma_e2ee::safety::{SafetyNumber, displayable_code};
use serde_json::Value;

fn load(path: &str) -> Value {
    let full = format!("{}/tests/vectors/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn hex_field(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_else(|| panic!("missing {key}"))).unwrap()
}

fn suite_1() -> Value {
    let all = load("mls/crypto-basics.json");
    all.as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["cipher_suite"] == 1)
        .expect("cipher suite 1 entry")
        .clone()
}

#[test]
fn mls_expand_with_label() {
    let v = &suite_1()["expand_with_label"];
    let mut out = vec![0u8; v["length"].as_u64().unwrap() as usize];
    expand_with_label(
        &hex_field(v, "secret"),
        v["label"].as_str().unwrap(),
        &hex_field(v, "context"),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, hex_field(v, "out"));
}

#[test]
fn mls_derive_secret() {
    let v = &suite_1()["derive_secret"];
    let out = derive_secret(&hex_field(v, "secret"), v["label"].as_str().unwrap()).unwrap();
    assert_eq!(out.to_vec(), hex_field(v, "out"));
}

#[test]
fn mls_derive_tree_secret() {
    let v = &suite_1()["derive_tree_secret"];
    let mut out = vec![0u8; v["length"].as_u64().unwrap() as usize];
    derive_tree_secret(
        &hex_field(v, "secret"),
        v["label"].as_str().unwrap(),
        u32::try_from(v["generation"].as_u64().unwrap()).unwrap(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, hex_field(v, "out"));
}

#[test]
fn dave_displayable_codes() {
    let v = load("dave/displayable-code.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let data = hex_field(case, "data_hex");
        let code = displayable_code(
            &data,
            case["code_len"].as_u64().unwrap() as usize,
            case["group_len"].as_u64().unwrap() as usize,
        )
        .unwrap();
        assert_eq!(code, case["expected"].as_str().unwrap());
        if data.len() >= 30 && case["code_len"] == 30 && case["group_len"] == 5 {
            let number = SafetyNumber::from_epoch_authenticator(&data).unwrap();
            assert_eq!(number.digits(), case["expected"].as_str().unwrap());
        }
    }
    for case in v["must_fail"].as_array().unwrap() {
        let result = displayable_code(
            &hex_field(case, "data_hex"),
            case["code_len"].as_u64().unwrap() as usize,
            case["group_len"].as_u64().unwrap() as usize,
        );
        assert!(result.is_err(), "{}", case["why"]);
    }
}

fn codec_of(name: &str) -> Codec {
    match name {
        "opus" => Codec::Opus,
        "h264" => Codec::H264,
        "h265" => Codec::H265,
        "vp8" => Codec::Vp8,
        "vp9" => Codec::Vp9,
        "av1" => Codec::Av1,
        other => panic!("unknown codec {other}"),
    }
}

fn expected_ranges(case: &Value) -> Vec<(usize, usize)> {
    case["clear_ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_u64().unwrap() as usize,
                r[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn dave_codec_clear_ranges() {
    let v = load("dave/codec-clear-ranges.json");
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let codec = codec_of(case["codec"].as_str().unwrap());
        let frame = hex_field(case, "frame_hex");
        let mut layout = FrameLayout::default();
        assert!(layout.build(codec, &frame), "{name}: parse failed");
        let got: Vec<(usize, usize)> = layout.clear.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(got, expected_ranges(case), "{name}");
        if let Some(expected) = case.get("expected_clear_bytes_hex") {
            let clear: Vec<u8> = layout
                .clear
                .iter()
                .flat_map(|r| layout.bytes[r.offset..r.end()].to_vec())
                .collect();
            assert_eq!(hex::encode(clear), expected.as_str().unwrap(), "{name}");
        }

        // The same ranges end up in the trailer of an encrypted frame, and
        // their bytes are untouched.
        let mut enc = Encryptor::new();
        enc.set_key(1, &BaseSecret::new([3u8; 16]));
        let sealed = enc.encrypt(codec, &frame).unwrap();
        let parsed = ProtocolFrame::parse(&sealed).unwrap();
        let in_trailer: Vec<(usize, usize)> =
            parsed.ranges.iter().map(|r| (r.offset, r.len)).collect();
        assert_eq!(in_trailer, expected_ranges(case), "{name} trailer");
        for r in parsed.ranges.iter() {
            assert_eq!(
                parsed.payload[r.offset..r.end()],
                layout.bytes[r.offset..r.end()],
                "{name}"
            );
        }
    }
}

#[test]
fn dave_trailer_parsing() {
    let v = load("dave/trailer.json");
    let frame = hex_field(&v, "frame_hex");
    let expected = &v["expected"];
    let parsed = ProtocolFrame::parse(&frame).unwrap();
    assert_eq!(
        parsed.payload.len(),
        expected["payload_len"].as_u64().unwrap() as usize
    );
    assert_eq!(parsed.tag.to_vec(), hex_field(expected, "tag_hex"));
    assert_eq!(u64::from(parsed.nonce), expected["nonce"].as_u64().unwrap());
    assert_eq!(
        u64::from(parsed.supplemental_size),
        expected["supplemental_size"].as_u64().unwrap()
    );
    let got: Vec<(usize, usize)> = parsed.ranges.iter().map(|r| (r.offset, r.len)).collect();
    assert_eq!(got, expected_ranges(expected));
}
