//! The recording session: join as a visible member, pull every track, decrypt, write.
//!
//! 1. Join the room through the coordinator's WebSocket with a token that grants
//!    `recorder` ([`RoomMember`]): every member's roster marks this participant as a
//!    recorder, and it becomes an MLS member of the room's group like any other (it gets
//!    the keys only through the group, so every member's verified roster lists it).
//! 2. Wait for the keys (the member is in the group), then open an SFU session through the
//!    coordinator's proxy (`/sfu`, bearer = the resume token) and pull every track the room
//!    announces, again whenever one is published.
//! 3. For each pulled track: the codec from the first packet's payload type; RTP → frames
//!    ([`crate::vp8::Assembler`] for VP8, [`crate::vp9::Assembler`] for VP9, whose layer
//!    frames are opened one by one and joined into a superframe; one Opus packet is one
//!    frame) → decrypt with the keys of the participant that owns the publishing session →
//!    [`TrackFile`] (WebM). Video waits for a keyframe (PLI every second until one
//!    arrives). A codec WebM cannot carry (H.264) is named in the manifest and the log, and
//!    not recorded.
//! 4. At the end (duration reached, stop signal, or the member was removed or lost),
//!    finalize the files, write `manifest.json` and leave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use satsuma_bot::participant::TappedRtp;
use satsuma_bot::room::RoomMember;
use satsuma_bot::{Bot, BotConfig};
use satsuma_wire::room::{TrackKind, close};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::clock::Timeline;
use crate::track::{Codec, TrackFile};
use crate::{vp8, vp9};

/// What to record and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The coordinator's base URL, e.g. `http://127.0.0.1:8080`.
    pub coordinator: String,
    /// The room.
    pub room: String,
    /// A join token for the room that grants `recorder` (and `subscribe`).
    pub token: String,
    /// The display name (what the token says is shown; this names the MLS credential).
    pub name: String,
    /// Directory for the files (created if missing).
    pub out: PathBuf,
    /// Stop after this long from the start of the recording (`None`: until stopped).
    pub duration: Option<Duration>,
    /// How long to wait for the group's keys after joining.
    pub join_timeout: Duration,
}

/// One safety number seen during the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafetySeen {
    /// The MLS epoch.
    pub epoch: u64,
    /// Its safety number (every member of that epoch shows the same one).
    pub safety_number: String,
    /// When it was first seen (Unix ms).
    pub seen_at_ms: u64,
}

/// A participant seen during the recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParticipantSeen {
    /// Participant id.
    pub id: u64,
    /// Display name.
    pub name: String,
    /// Host?
    pub host: bool,
    /// A recorder?
    pub recorder: bool,
}

/// One recorded track.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackEntry {
    /// The WebM file, relative to the output directory (`null` if nothing decodable came).
    pub file: Option<String>,
    /// Publisher's participant id.
    pub participant_id: u64,
    /// Publisher's display name.
    pub participant_name: String,
    /// SFU session.
    pub session_id: String,
    /// Track name.
    pub track_name: String,
    /// `audio`, `video` or `screenshare`.
    pub kind: String,
    /// `VP8`, `VP9` or `Opus`; a video codec the recorder cannot write (`H264`, ...), see
    /// `not_recorded`; `unknown` if no packet came.
    pub codec: String,
    /// Why the track has no file although its packets came: its codec cannot be written
    /// (H.264: WebM cannot carry it).
    pub not_recorded: Option<String>,
    /// Packets in a codec other than the file's (the publisher switched codecs after the
    /// file started), dropped.
    pub other_codec_packets: u64,
    /// Packets whose payload type this session did not negotiate, dropped.
    pub unknown_codec_packets: u64,
    /// Frames written.
    pub frames: u64,
    /// Video keyframes written.
    pub keyframes: u64,
    /// Frames that did not decrypt (no key, failed authentication, replay).
    pub decrypt_failures: u64,
    /// Frames given up in reassembly (a packet missing).
    pub lost_frames: u64,
    /// Video frames dropped before the first keyframe.
    pub before_keyframe: u64,
    /// The first frame's time, ms from the recording's start.
    pub first_frame_ms: Option<u64>,
    /// The last frame's time, ms from the recording's start.
    pub last_frame_ms: Option<u64>,
    /// Video size of the first keyframe.
    pub width: Option<u32>,
    /// Video size of the first keyframe.
    pub height: Option<u32>,
    /// Keyframe requests sent.
    pub keyframe_requests: u64,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// The room.
    pub room: String,
    /// The recorder's participant id.
    pub recorder_id: u64,
    /// The recorder's name.
    pub recorder_name: String,
    /// Start of the recording (the recorder holds the group's keys), Unix ms.
    pub started_at_ms: u64,
    /// End of the recording, Unix ms.
    pub ended_at_ms: u64,
    /// Why it ended.
    pub ended_because: String,
    /// Everyone seen in the room meanwhile.
    pub participants: Vec<ParticipantSeen>,
    /// The tracks.
    pub tracks: Vec<TrackEntry>,
    /// The safety numbers of the epochs the recorder was in.
    pub safety_numbers: Vec<SafetySeen>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A pulled track being recorded.
struct Recording {
    entry: TrackEntry,
    /// Video (camera or screen)?
    video: bool,
    /// Where the file goes and its name without the codec suffix.
    out: PathBuf,
    stem: String,
    /// The codec and the file, from the first packet in a recordable codec.
    file: Option<(Codec, TrackFile)>,
    vp8: vp8::Assembler,
    vp9: vp9::Assembler,
    /// The track's frames on the recording's timeline.
    timeline: Timeline,
    /// Unwrapping audio timestamps: the last raw one and its extended value.
    audio_ts: Option<(u32, i64)>,
    last_pli: Option<Instant>,
}

/// What the recorder does with a track in `codec` (str0m's name of the payload type).
#[derive(Debug, Clone, PartialEq, Eq)]
enum CodecVerdict {
    Record(Codec),
    /// Its packets come, but the recorder cannot write it: why.
    Unrecordable(&'static str, &'static str),
    /// Not media (retransmissions, redundancy) or a payload type not negotiated.
    Ignore,
}

fn verdict(codec: &str, video: bool) -> CodecVerdict {
    match (codec, video) {
        ("VP8", true) => CodecVerdict::Record(Codec::Vp8),
        ("VP9", true) => CodecVerdict::Record(Codec::Vp9),
        ("opus", false) => CodecVerdict::Record(Codec::Opus),
        ("H264", true) => CodecVerdict::Unrecordable(
            "H264",
            "H.264 is not recorded: WebM cannot carry H.264 (publishers that send VP8 or VP9 are recorded)",
        ),
        ("H265", true) => {
            CodecVerdict::Unrecordable("H265", "H.265 is not recorded: WebM cannot carry H.265")
        }
        ("AV1", true) => CodecVerdict::Unrecordable(
            "AV1",
            "AV1 is not recorded: the recorder writes VP8, VP9 and Opus only",
        ),
        _ => CodecVerdict::Ignore,
    }
}

impl Recording {
    fn write(&mut self, frames: Vec<(u64, Vec<u8>)>) {
        let Some((_, file)) = self.file.as_mut() else {
            return;
        };
        for (ns, frame) in frames {
            if let Err(e) = file.write(&frame, ns) {
                warn!("{e}");
            }
        }
    }

    /// The codec to handle packet `p` in, opening the file with the first recordable one;
    /// `None`: drop it (counted, and logged once per track for a codec that cannot be
    /// recorded or a switch of codec).
    fn codec_of(&mut self, p: &TappedRtp) -> Option<Codec> {
        match verdict(&p.codec, self.video) {
            CodecVerdict::Record(c) => match self.file.as_ref().map(|(have, _)| *have) {
                Some(have) if have == c => Some(c),
                Some(have) => {
                    if self.entry.other_codec_packets == 0 {
                        warn!(
                            participant = self.entry.participant_id,
                            track = %self.entry.track_name,
                            "the publisher switched from {} to {}: the file keeps {}, the rest is not recorded",
                            have.name(), c.name(), have.name()
                        );
                    }
                    self.entry.other_codec_packets += 1;
                    None
                }
                None => {
                    let name = format!("{}-{}.webm", self.stem, c.suffix());
                    info!(
                        participant = self.entry.participant_id,
                        track = %self.entry.track_name,
                        codec = c.name(),
                        file = %name,
                        "recording"
                    );
                    self.entry.codec = c.name().to_owned();
                    self.entry.not_recorded = None;
                    self.entry.file = Some(name.clone());
                    self.file = Some((c, TrackFile::new(&self.out.join(name), c)));
                    Some(c)
                }
            },
            CodecVerdict::Unrecordable(name, why) => {
                if self.file.is_none() && self.entry.not_recorded.is_none() {
                    warn!(
                        participant = self.entry.participant_id,
                        participant_name = %self.entry.participant_name,
                        track = %self.entry.track_name,
                        "{why}"
                    );
                    self.entry.codec = name.to_owned();
                    self.entry.not_recorded = Some(why.to_owned());
                } else if self.file.is_some() {
                    self.entry.other_codec_packets += 1;
                }
                None
            }
            CodecVerdict::Ignore => {
                if p.codec.is_empty() {
                    self.entry.unknown_codec_packets += 1;
                }
                None
            }
        }
    }

    fn audio_ext(&mut self, ts: u32) -> i64 {
        let ext = match self.audio_ts {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw).cast_signed()),
        };
        self.audio_ts = Some((ts, ext));
        ext
    }
}

/// Errors that end a recording before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Joining failed.
    #[error("joining the room: {0}")]
    Join(#[from] satsuma_bot::room::RoomError),
    /// The group's keys did not arrive.
    #[error("no MLS membership within {0:?} (phase {1:?})")]
    NoKeys(Duration, String),
    /// The SFU session could not be opened.
    #[error("SFU session: {0}")]
    Bot(#[from] satsuma_bot::BotError),
    /// The room does not show this participant as a recorder (the token lacks the
    /// `recorder` grant): recording unannounced is refused.
    #[error(
        "the room does not mark this participant as a recorder: use a token that grants \
         `recorder` (e.g. `satsuma token create --recorder`)"
    )]
    NotRecorder,
    /// The output directory.
    #[error("output directory {0}: {1}")]
    Out(PathBuf, std::io::Error),
}

fn ws_url(coordinator: &str, room: &str) -> String {
    let base = coordinator.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws/{room}")
}

fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect()
}

/// Records until the duration passes, `stop` resolves, or the recorder leaves the room;
/// returns the manifest (also written to `out/manifest.json`).
///
/// # Errors
/// Joining, getting the keys, or opening the SFU session failed; or the output directory
/// cannot be created.
pub async fn record(
    opts: &Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Manifest, RecordError> {
    std::fs::create_dir_all(&opts.out).map_err(|e| RecordError::Out(opts.out.clone(), e))?;
    let member = RoomMember::join(
        &ws_url(&opts.coordinator, &opts.room),
        &opts.token,
        &opts.name,
    )
    .await?;
    let me = member.view().participant_id;
    info!(participant_id = me, "joined; waiting for the group's keys");
    let view = member
        .wait_for(opts.join_timeout, |v| {
            v.phase == "member" && v.epoch.is_some()
        })
        .await
        .map_err(|v| RecordError::NoKeys(opts.join_timeout, v.phase))?;
    // Everyone must be able to see that this participant records: without the coordinator's
    // recorder mark (its own `joined` entry, which precedes the group's commit), leave.
    let marked = member
        .wait_for(Duration::from_secs(5), |v| {
            v.roster.participants.get(&me).is_some_and(|p| p.recorder)
        })
        .await;
    if marked.is_err() {
        member.leave().await;
        return Err(RecordError::NotRecorder);
    }
    let mut config = BotConfig::new(&opts.coordinator, "", &view.resume_token);
    config.api_base = Some(format!("{}/sfu", opts.coordinator.trim_end_matches('/')));
    config.participant.send_on_publish = false;
    config.participant.request_keyframes = false;
    // Browsers may publish VP9 or H.264 instead of VP8: negotiate them so their packets come
    // (VP9 is recorded; H.264 is named as not recordable instead of silently missing).
    config.participant.receive_vp9_h264 = true;
    let bot = Bot::connect_with(config).await?;
    let mut rtp = bot.tap_rtp().await?;
    let start = Instant::now();
    let started_at_ms = unix_ms();
    info!(session = bot.session_id(), "recording");
    let deadline = opts.duration.map(|d| start + d);

    let mut recordings: BTreeMap<String, Recording> = BTreeMap::new();
    let mut pulled: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut participants: BTreeMap<u64, ParticipantSeen> = BTreeMap::new();
    let mut safety: Vec<SafetySeen> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tokio::pin!(stop);
    let ended_because = loop {
        tokio::select! {
            () = &mut stop => break "stopped".to_owned(),
            p = rtp.recv() => match p {
                Some(p) => on_packet(&member, &mut recordings, p, start).await,
                None => break "the media connection ended".to_owned(),
            },
            _ = tick.tick() => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break "duration reached".to_owned();
                }
                let v = member.view();
                // Removed, replaced, timed out or refused a resume: the recording ends (a
                // network loss is resumed by the member and the recording goes on).
                if let Some((code, reason)) = v.closed.as_ref()
                    && [
                        close::NORMAL,
                        close::UNAUTHORIZED,
                        close::REMOVED,
                        close::PRESENCE_TIMEOUT,
                        close::REPLACED,
                        close::RESUME_FAILED,
                    ]
                    .contains(code)
                {
                    break format!("left the room ({code} {reason})");
                }
                if let (Some(epoch), Some(sn)) = (v.epoch, v.safety_number.clone())
                    && safety.last().is_none_or(|s| s.epoch != epoch || s.safety_number != sn)
                {
                    safety.push(SafetySeen { epoch, safety_number: sn, seen_at_ms: unix_ms() });
                }
                let mut wanted = Vec::new();
                for p in v.roster.participants.values() {
                    participants.entry(p.id).or_insert_with(|| ParticipantSeen {
                        id: p.id,
                        name: p.name.clone(),
                        host: p.host,
                        recorder: p.recorder,
                    });
                    if p.id == me {
                        continue;
                    }
                    for t in &p.tracks {
                        let key = (t.session_id.clone(), t.track_name.clone());
                        if !pulled.contains_key(&key) {
                            wanted.push((p.id, p.name.clone(), t.clone()));
                        }
                    }
                }
                for (id, name, t) in wanted {
                    match bot.subscribe(&t.session_id, &t.track_name).await {
                        Ok(sub) => {
                            info!(mid = %sub.mid, participant = id, track = %t.track_name, "pulling");
                            pulled.insert((t.session_id.clone(), t.track_name.clone()), ());
                            let video = t.kind != TrackKind::Audio;
                            let stem = format!(
                                "p{id}-{}-{}",
                                safe_name(&name),
                                safe_name(&t.track_name)
                            );
                            recordings.insert(sub.mid.clone(), Recording {
                                entry: TrackEntry {
                                    file: None,
                                    participant_id: id,
                                    participant_name: name,
                                    session_id: t.session_id.clone(),
                                    track_name: t.track_name.clone(),
                                    kind: match t.kind {
                                        TrackKind::Audio => "audio",
                                        TrackKind::Video => "video",
                                        TrackKind::Screenshare => "screenshare",
                                    }.to_owned(),
                                    codec: "unknown".to_owned(),
                                    not_recorded: None,
                                    other_codec_packets: 0,
                                    unknown_codec_packets: 0,
                                    frames: 0,
                                    keyframes: 0,
                                    decrypt_failures: 0,
                                    lost_frames: 0,
                                    before_keyframe: 0,
                                    first_frame_ms: None,
                                    last_frame_ms: None,
                                    width: None,
                                    height: None,
                                    keyframe_requests: 0,
                                },
                                video,
                                out: opts.out.clone(),
                                stem,
                                file: None,
                                vp8: vp8::Assembler::default(),
                                vp9: vp9::Assembler::default(),
                                timeline: Timeline::new(if video {
                                    Codec::Vp8.clock_rate()
                                } else {
                                    Codec::Opus.clock_rate()
                                }),
                                audio_ts: None,
                                last_pli: None,
                            });
                        }
                        Err(e) => warn!(track = %t.track_name, "pull failed (retrying): {e}"),
                    }
                }
                // Video without a keyframe yet: ask for one every second.
                let now = Instant::now();
                for (mid, r) in &mut recordings {
                    if r.video
                        && r.entry.not_recorded.is_none()
                        && !r.file.as_ref().is_some_and(|(_, f)| f.started())
                        && r.last_pli.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        r.last_pli = Some(now);
                        if bot.request_keyframe(mid).await.unwrap_or(false) {
                            r.entry.keyframe_requests += 1;
                        }
                    }
                }
            }
        }
    };
    let ended_at_ms = unix_ms();
    info!(%ended_because, "stopping");
    let _ = bot.shutdown().await;
    let mut tracks = Vec::new();
    for (_, r) in recordings {
        let mut r = r;
        let rest = r.timeline.flush();
        r.write(rest);
        let Recording {
            mut entry,
            file,
            vp8,
            vp9,
            ..
        } = r;
        entry.lost_frames = vp8.lost + vp9.lost;
        if let Some((_, file)) = file {
            entry.frames = file.frames;
            entry.keyframes = file.keyframes;
            entry.before_keyframe = file.waiting;
            entry.first_frame_ms = file.first_ns.map(|n| n / 1_000_000);
            entry.last_frame_ms = file.last_ns().map(|n| n / 1_000_000);
            entry.width = file.size.map(|s| s.0);
            entry.height = file.size.map(|s| s.1);
            match file.finish() {
                Ok(true) => {}
                Ok(false) => entry.file = None,
                Err(e) => {
                    warn!("{e}");
                    entry.file = None;
                }
            }
        }
        if let Some(why) = &entry.not_recorded {
            warn!(participant = %entry.participant_name, track = %entry.track_name, "not recorded: {why}");
        }
        tracks.push(entry);
    }
    let manifest = Manifest {
        room: opts.room.clone(),
        recorder_id: me,
        recorder_name: opts.name.clone(),
        started_at_ms,
        ended_at_ms,
        ended_because,
        participants: participants.into_values().collect(),
        tracks,
        safety_numbers: safety,
    };
    write_manifest(&opts.out, &manifest);
    member.leave().await;
    Ok(manifest)
}

fn write_manifest(out: &Path, manifest: &Manifest) {
    match serde_json::to_vec_pretty(manifest) {
        Ok(bytes) => {
            if let Err(e) = std::fs::write(out.join("manifest.json"), bytes) {
                warn!("writing manifest.json: {e}");
            }
        }
        Err(e) => warn!("encoding the manifest: {e}"),
    }
}

async fn on_packet(
    member: &RoomMember,
    recordings: &mut BTreeMap<String, Recording>,
    p: TappedRtp,
    start: Instant,
) {
    let Some(r) = recordings.get_mut(&p.mid) else {
        return;
    };
    let Some(codec) = r.codec_of(&p) else {
        return;
    };
    // Each frame as the sealed pieces the sender's E2EE transform sealed one by one (VP9:
    // one per spatial layer).
    let frames: Vec<(i64, Vec<Vec<u8>>)> = match codec {
        Codec::Vp8 => r
            .vp8
            .push(p.seq, p.timestamp, p.marker, &p.payload)
            .into_iter()
            .map(|(ts, f)| (ts, vec![f]))
            .collect(),
        Codec::Vp9 => match r.vp9.push(p.seq, p.timestamp, p.marker, &p.payload) {
            Ok(Some(picture)) => {
                if let Some((_, file)) = r.file.as_mut() {
                    file.set_size_hint(picture.size);
                }
                vec![(picture.timestamp, picture.frames)]
            }
            Ok(None) => Vec::new(),
            Err(e) => {
                debug!(track = %r.entry.track_name, "dropped a VP9 packet: {e}");
                Vec::new()
            }
        },
        Codec::Opus => {
            let ext = r.audio_ext(p.timestamp);
            vec![(ext, vec![p.payload])]
        }
    };
    'frames: for (ts, pieces) in frames {
        let mut opened = Vec::with_capacity(pieces.len());
        for sealed in pieces {
            let Some(plain) = member
                .decrypt(r.entry.participant_id, r.video, sealed)
                .await
            else {
                r.entry.decrypt_failures += 1;
                continue 'frames;
            };
            opened.push(plain);
        }
        let plain = if opened.len() == 1 {
            opened.pop()
        } else {
            vp9::superframe(&opened)
        };
        let Some(plain) = plain else {
            continue;
        };
        let arrived = i64::try_from(p.arrived.saturating_duration_since(start).as_nanos())
            .unwrap_or(i64::MAX);
        let due = r.timeline.push(ts, arrived, plain);
        r.write(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_are_recorded_named_as_unrecordable_or_ignored() {
        assert_eq!(verdict("VP8", true), CodecVerdict::Record(Codec::Vp8));
        assert_eq!(verdict("VP9", true), CodecVerdict::Record(Codec::Vp9));
        assert_eq!(verdict("opus", false), CodecVerdict::Record(Codec::Opus));
        assert!(matches!(
            verdict("H264", true),
            CodecVerdict::Unrecordable("H264", why) if why.contains("WebM cannot carry H.264")
        ));
        assert!(matches!(
            verdict("AV1", true),
            CodecVerdict::Unrecordable("AV1", _)
        ));
        // Retransmissions, redundancy, a payload type not negotiated, a codec on the wrong
        // kind of track: dropped without deciding the track's codec.
        for (codec, video) in [
            ("rtx", true),
            ("red", false),
            ("", true),
            ("VP8", false),
            ("opus", true),
        ] {
            assert_eq!(
                verdict(codec, video),
                CodecVerdict::Ignore,
                "{codec} {video}"
            );
        }
    }
}
