//! One recorded track: decrypted frames in, one WebM file out (libwebm through the `webm`
//! crate). The file is created with the first frame that can start it (a VP8 or VP9 keyframe,
//! whose header gives the size; any Opus packet) and finalized by [`TrackFile::finish`].

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use thiserror::Error;
use webm::mux::{
    AudioCodecId, AudioTrack, Segment, SegmentBuilder, VideoCodecId, VideoTrack, Writer,
};

use crate::{vp8, vp9};

/// Why a track could not be written.
#[derive(Debug, Error)]
pub enum TrackError {
    /// The file could not be created.
    #[error("creating {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// libwebm refused a step.
    #[error("muxing {path}: {what}")]
    Mux {
        /// The file.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}

/// The codec of a recorded track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// VP8 video (RTP clock 90 kHz).
    Vp8,
    /// VP9 video (RTP clock 90 kHz); a picture of several spatial layers is one superframe.
    Vp9,
    /// Opus audio (RTP clock 48 kHz).
    Opus,
}

impl Codec {
    /// The RTP clock rate.
    #[must_use]
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Vp8 | Self::Vp9 => 90_000,
            Self::Opus => 48_000,
        }
    }

    /// Video?
    #[must_use]
    pub fn is_video(self) -> bool {
        matches!(self, Self::Vp8 | Self::Vp9)
    }

    /// The name the manifest gives it (`VP8`, `VP9`, `Opus`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Vp8 => "VP8",
            Self::Vp9 => "VP9",
            Self::Opus => "Opus",
        }
    }

    /// The file name's suffix (`vp8`, `vp9`, `opus`).
    #[must_use]
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Vp8 => "vp8",
            Self::Vp9 => "vp9",
            Self::Opus => "opus",
        }
    }

    /// Whether `frame` (decrypted) is a keyframe; every Opus packet is one.
    #[must_use]
    pub fn is_keyframe(self, frame: &[u8]) -> bool {
        match self {
            Self::Vp8 => vp8::is_keyframe(frame),
            Self::Vp9 => vp9::is_keyframe(frame),
            Self::Opus => true,
        }
    }

    /// The size of a keyframe that can start a file (video), from its header.
    fn keyframe_size(self, frame: &[u8]) -> Option<(u32, u32)> {
        match self {
            Self::Vp8 => vp8::keyframe_size(frame),
            Self::Vp9 => vp9::parse_header(frame)
                .ok()
                .filter(|h| h.keyframe)
                .and_then(|h| h.size),
            Self::Opus => None,
        }
    }
}

/// The `OpusHead` a Matroska Opus track carries as CodecPrivate (RFC 7845 §5.1): version 1,
/// 2 channels (WebRTC Opus is negotiated as stereo), no pre-skip, 48 kHz, no gain, mapping 0.
#[must_use]
pub fn opus_head() -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(2);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

enum Track {
    Video(VideoTrack),
    Audio(AudioTrack),
}

/// A WebM file being written for one track.
pub struct TrackFile {
    path: PathBuf,
    codec: Codec,
    open: Option<(Segment<BufWriter<File>>, Track)>,
    last_ns: Option<u64>,
    /// Frames written.
    pub frames: u64,
    /// Keyframes written (video).
    pub keyframes: u64,
    /// Frames dropped before the first keyframe (video).
    pub waiting: u64,
    /// The video size the file declares: the first keyframe's, or the size hint.
    pub size: Option<(u32, u32)>,
    /// The size a VP9 sender declared for its top spatial layer (scalability structure),
    /// which the file declares instead of the base layer's.
    size_hint: Option<(u32, u32)>,
    /// Timestamps of the first and last frame written (ns from the recording's start).
    pub first_ns: Option<u64>,
}

impl std::fmt::Debug for TrackFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackFile")
            .field("path", &self.path)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl TrackFile {
    /// A track to be written to `path` (created with its first usable frame).
    #[must_use]
    pub fn new(path: &Path, codec: Codec) -> Self {
        Self {
            path: path.to_owned(),
            codec,
            open: None,
            last_ns: None,
            frames: 0,
            keyframes: 0,
            waiting: 0,
            size: None,
            size_hint: None,
            first_ns: None,
        }
    }

    /// The video size to declare if the file has not started yet (VP9: the top spatial
    /// layer's, from the sender's scalability structure).
    pub fn set_size_hint(&mut self, size: Option<(u32, u32)>) {
        if self.open.is_none() && size.is_some() {
            self.size_hint = size;
        }
    }

    /// Whether the file has started (video: a keyframe arrived).
    #[must_use]
    pub fn started(&self) -> bool {
        self.open.is_some()
    }

    /// The last timestamp written (ns from the recording's start).
    #[must_use]
    pub fn last_ns(&self) -> Option<u64> {
        self.last_ns
    }

    fn mux_error(&self, what: impl std::fmt::Display) -> TrackError {
        TrackError::Mux {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    fn start(&mut self, frame: &[u8]) -> Result<bool, TrackError> {
        let size = self.codec.keyframe_size(frame);
        if self.codec.is_video() && size.is_none() {
            return Ok(false);
        }
        let file = File::create(&self.path).map_err(|source| TrackError::Create {
            path: self.path.clone(),
            source,
        })?;
        let builder = SegmentBuilder::new(Writer::new(BufWriter::new(file)))
            .and_then(|b| b.set_writing_app("satsuma-record"))
            .map_err(|e| self.mux_error(e))?;
        let (builder, track) = match self.codec {
            Codec::Vp8 | Codec::Vp9 => {
                let Some((w, h)) = self.size_hint.or(size) else {
                    return Ok(false);
                };
                self.size = Some((w, h));
                let id = if self.codec == Codec::Vp9 {
                    VideoCodecId::VP9
                } else {
                    VideoCodecId::VP8
                };
                let (b, t) = builder
                    .add_video_track(w, h, id, None)
                    .map_err(|e| self.mux_error(e))?;
                (b, Track::Video(t))
            }
            Codec::Opus => {
                let (b, t) = builder
                    .add_audio_track(48_000, 2, AudioCodecId::Opus, None)
                    .map_err(|e| self.mux_error(e))?;
                let b = b
                    .set_codec_private(t, &opus_head())
                    .map_err(|e| self.mux_error(e))?;
                (b, Track::Audio(t))
            }
        };
        self.open = Some((builder.build(), track));
        Ok(true)
    }

    /// Writes one decrypted frame at `ns` from the recording's start. A video frame before
    /// the first keyframe is dropped (counted in `waiting`); a timestamp not after the last
    /// one is moved 1 µs after it (the muxer needs them increasing).
    ///
    /// # Errors
    /// The file could not be created or libwebm refused the frame.
    pub fn write(&mut self, frame: &[u8], ns: u64) -> Result<(), TrackError> {
        if frame.is_empty() {
            return Ok(());
        }
        if self.open.is_none() && !self.start(frame)? {
            self.waiting += 1;
            return Ok(());
        }
        let ns = match self.last_ns {
            Some(last) if ns <= last => last + 1_000,
            _ => ns,
        };
        let key = self.codec.is_keyframe(frame);
        let result = match self.open.as_mut() {
            Some((segment, Track::Video(t))) => segment.add_frame(*t, frame, ns, key),
            Some((segment, Track::Audio(t))) => segment.add_frame(*t, frame, ns, key),
            None => return Ok(()),
        };
        result.map_err(|e| self.mux_error(e))?;
        self.first_ns.get_or_insert(ns);
        self.last_ns = Some(ns);
        self.frames += 1;
        if key && self.codec.is_video() {
            self.keyframes += 1;
        }
        Ok(())
    }

    /// Finalizes the file (cues, duration); `Ok(false)` if nothing was ever written (no
    /// file).
    ///
    /// # Errors
    /// libwebm could not finalize it.
    pub fn finish(mut self) -> Result<bool, TrackError> {
        let Some((segment, _)) = self.open.take() else {
            return Ok(false);
        };
        match segment.finalize(None) {
            Ok(writer) => {
                let mut inner = writer.into_inner();
                std::io::Write::flush(&mut inner).map_err(|e| self.mux_error(e))?;
                Ok(true)
            }
            Err(_) => Err(self.mux_error("finalize failed")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn opus_head_is_19_bytes() {
        let h = opus_head();
        assert_eq!(h.len(), 19);
        assert_eq!(&h[..8], b"OpusHead");
    }

    #[test]
    fn video_waits_for_a_keyframe_and_nothing_written_means_no_file() {
        let dir = std::env::temp_dir().join(format!("rec-track-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.webm");
        let mut t = TrackFile::new(&path, Codec::Vp8);
        t.write(&[0x01, 0, 0, 1, 2, 3], 0).unwrap();
        assert!(!t.started());
        assert_eq!(t.waiting, 1);
        assert!(!t.finish().unwrap());
        assert!(!path.exists());
        let mut key = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a];
        key.extend_from_slice(&64u16.to_le_bytes());
        key.extend_from_slice(&48u16.to_le_bytes());
        key.extend_from_slice(&[0; 32]);
        let mut t = TrackFile::new(&path, Codec::Vp8);
        t.write(&key, 5_000_000).unwrap();
        t.write(&[0x01, 1, 2, 3], 5_000_000).unwrap();
        assert_eq!((t.frames, t.keyframes, t.size), (2, 1, Some((64, 48))));
        assert_eq!(t.last_ns(), Some(5_001_000));
        assert!(t.finish().unwrap());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], &[0x1a, 0x45, 0xdf, 0xa3], "EBML magic");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Runs a tool; its stdout, or why it could not run.
    fn tool(bin: &str, args: &[&str]) -> Result<Vec<u8>, String> {
        let out = std::process::Command::new(bin)
            .args(args)
            .output()
            .map_err(|e| format!("{bin} not runnable: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{bin} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out.stdout)
    }

    /// The frames of an IVF file.
    fn ivf_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        assert_eq!(&bytes[..4], b"DKIF");
        let mut at = usize::from(u16::from_le_bytes([bytes[6], bytes[7]]));
        let mut out = Vec::new();
        while at + 12 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            out.push(bytes[at + 12..at + 12 + len].to_vec());
            at += 12 + len;
        }
        out
    }

    /// SHA-256 of every video packet of `file`, as ffmpeg's framehash muxer hashes them.
    fn frame_hashes(file: &Path) -> Vec<String> {
        let out = tool(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                file.to_str().unwrap(),
                "-map",
                "0:v",
                "-c",
                "copy",
                "-f",
                "framehash",
                "-hash",
                "sha256",
                "-",
            ],
        )
        .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit(',').next().unwrap().trim().to_owned())
            .collect()
    }

    /// Real VP9 frames (ffmpeg's libvpx encoder) go through the RTP packetization the
    /// browser uses, the reassembler and the writer; ffprobe decodes the WebM, with every
    /// frame, the size and the duration, and the frames are the encoder's byte for byte.
    #[test]
    fn vp9_frames_round_trip_through_rtp_into_webm_that_ffprobe_decodes() {
        let dir = std::env::temp_dir().join(format!("rec-vp9-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ivf = dir.join("in.ivf");
        let encoded = tool(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=160x120:rate=30",
                "-frames:v",
                "30",
                "-c:v",
                "libvpx-vp9",
                "-g",
                "10",
                "-deadline",
                "realtime",
                "-auto-alt-ref",
                "0",
                "-lag-in-frames",
                "0",
                "-f",
                "ivf",
                ivf.to_str().unwrap(),
            ],
        );
        if let Err(why) = encoded {
            println!("skipped: no VP9 encoder to make test frames with ({why})");
            std::fs::remove_dir_all(&dir).unwrap();
            return;
        }
        let frames = ivf_frames(&std::fs::read(&ivf).unwrap());
        assert_eq!(frames.len(), 30);
        assert!(vp9::is_keyframe(&frames[0]));
        let path = dir.join("out.webm");
        let mut t = TrackFile::new(&path, Codec::Vp9);
        let mut a = vp9::Assembler::default();
        let mut seq = 0;
        for (i, f) in frames.iter().enumerate() {
            let i = i as u32;
            let key = vp9::is_keyframe(f);
            let mut done = None;
            for (marker, p) in vp9::tests::packetize(std::slice::from_ref(f), key, 300, key) {
                seq += 1;
                if let Some(pic) = a.push(seq, 1234 + 3000 * i, marker, &p).unwrap() {
                    done = Some(pic);
                }
            }
            let pic = done.expect("every picture completes at its marker");
            assert_eq!(pic.keyframe, key);
            if key {
                // The packetizer declared 320x180 for its one layer: the file says so.
                assert_eq!(pic.size, Some((320, 180)));
            }
            t.write(
                &vp9::superframe(&pic.frames).unwrap(),
                u64::from(i) * 33_333_333,
            )
            .unwrap();
        }
        let keys = frames.iter().filter(|f| vp9::is_keyframe(f)).count() as u64;
        assert!(keys >= 2, "-g 10 gives a keyframe every 10 frames: {keys}");
        assert_eq!((t.frames, t.keyframes, t.waiting), (30, keys, 0));
        assert_eq!(
            t.size,
            Some((160, 120)),
            "no hint set: the keyframe header's size"
        );
        assert!(t.finish().unwrap());

        // With the hint from the descriptor the track declares the top layer's size.
        let hinted = dir.join("hinted.webm");
        let mut h = TrackFile::new(&hinted, Codec::Vp9);
        h.write(&frames[1], 0).unwrap();
        assert_eq!(h.waiting, 1, "a delta frame cannot start the file");
        h.set_size_hint(Some((320, 180)));
        h.write(&frames[0], 1_000_000).unwrap();
        assert_eq!(h.size, Some((320, 180)));
        assert!(h.finish().unwrap());

        let probe = match tool(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "format=duration:stream=codec_name,nb_read_frames,width,height",
                "-of",
                "json",
                path.to_str().unwrap(),
            ],
        ) {
            Ok(p) => p,
            Err(why) => {
                println!("skipped the decode check: {why}");
                std::fs::remove_dir_all(&dir).unwrap();
                return;
            }
        };
        let probe: serde_json::Value = serde_json::from_slice(&probe).unwrap();
        let stream = &probe["streams"][0];
        assert_eq!(stream["codec_name"], "vp9", "{probe}");
        assert_eq!(stream["nb_read_frames"], "30", "{probe}");
        assert_eq!(
            (stream["width"].as_u64(), stream["height"].as_u64()),
            (Some(160), Some(120))
        );
        let duration: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (duration - 1.0).abs() < 0.1,
            "duration {duration} s for 30 frames at 30 fps"
        );
        let decode = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-i",
                path.to_str().unwrap(),
                "-f",
                "null",
                "-",
            ])
            .output()
            .unwrap();
        assert!(decode.status.success());
        assert!(
            decode.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&decode.stderr)
        );
        assert_eq!(
            frame_hashes(&path),
            frame_hashes(&ivf),
            "the frames, byte for byte"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
