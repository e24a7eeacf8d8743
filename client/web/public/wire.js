// Generated from the satsuma-wire crate (wire/src/js.rs): do not edit by hand.
// `SATSUMA_BLESS=1 cargo test -p satsuma-wire --test js_constants` rewrites it;
// `cargo test` fails while it differs from the crate.

/** `hello.v`: the coordinator protocol version. */
export const PROTOCOL_VERSION = 1;

/** Header of a server → client binary frame: `u64 seq ‖ u8 kind ‖ u64 from`. */
export const MLS_HEADER_LEN = 17;

/** Binary frame kinds. */
export const KIND = Object.freeze({
  KEY_PACKAGE: 1,
  COMMIT: 2,
  APPLICATION: 3,
});

/** Longest chat text (UTF-8 bytes) a client sends. */
export const MAX_CHAT_TEXT_BYTES = 4000;

/** WebSocket close codes of the coordinator. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  MESSAGE_TOO_BIG: 1009,
  BAD_HELLO: 4000,
  UNSUPPORTED_VERSION: 4001,
  PROTOCOL_VIOLATION: 4002,
  UNAUTHORIZED: 4401,
  REMOVED: 4403,
  PRESENCE_TIMEOUT: 4408,
  REPLACED: 4409,
  RESUME_FAILED: 4410,
  ROOM_LOCKED: 4423,
  ROOM_FULL: 4424,
  FLOOD: 4429,
  SLOW_CONSUMER: 4430,
});

/** `error.code` values. */
export const ERROR_CODE = Object.freeze({
  MALFORMED: 'malformed',
  UNKNOWN_TYPE: 'unknown_type',
  TOO_LARGE: 'too_large',
  FORBIDDEN: 'forbidden',
  NOT_FOUND: 'not_found',
  INVALID: 'invalid',
  RATE_LIMITED: 'rate_limited',
  MLS_FRAMING: 'mls_framing',
  ALREADY_JOINED: 'already_joined',
  RECORDING_UNAVAILABLE: 'recording_unavailable',
  RECORDING_STATE: 'recording_state',
  RECORDING_FAILED: 'recording_failed',
  NOT_MEMBER: 'not_member',
  LOG_FULL: 'log_full',
});

/** `commit_rejected.reason` values. */
export const COMMIT_REJECTED = Object.freeze({
  STALE_EPOCH: 'stale_epoch',
  WRONG_GROUP: 'wrong_group',
  NO_GROUP: 'no_group',
  NOT_MEMBER: 'not_member',
  MALFORMED: 'malformed',
  UNKNOWN_KEY_PACKAGE: 'unknown_key_package',
});

/** `move.reason` values. */
export const MOVE_REASON = Object.freeze({
  DRAINING: 'draining',
  DOWN: 'down',
});

/** `errorCode` values of the SFU API (an error response, or a failed entry of a `tracks/*` or `datachannels/*` reply). */
export const API_ERROR_CODE = Object.freeze({
  DECODING_ERROR: 'decoding_error',
  INVALID_PARAMS: 'invalid_params',
  INVALID_SDP: 'invalid_sdp',
  SESSION_NOT_FOUND: 'session_not_found',
  NOT_FOUND: 'not_found',
  METHOD_NOT_ALLOWED: 'method_not_allowed',
  UNAUTHORIZED: 'unauthorized',
  FORBIDDEN: 'forbidden',
  NO_PENDING_OFFER: 'no_pending_offer',
  RENEGOTIATION_PENDING: 'renegotiation_pending',
  NOT_CONNECTED: 'not_connected',
  RATE_LIMITED: 'rate_limited',
  TOO_MANY_TRACKS: 'too_many_tracks',
  TOO_MANY_SESSIONS: 'too_many_sessions',
  TOO_MANY_DATACHANNELS: 'too_many_datachannels',
  TOO_MANY_PUBLICATIONS: 'too_many_publications',
  TOO_MANY_LEGS: 'too_many_legs',
  TOO_MANY_PULLS: 'too_many_pulls',
  DUPLICATE_TRACK_NAME: 'duplicate_track_name',
  DUPLICATE_DATACHANNEL_NAME: 'duplicate_datachannel_name',
  CLOSE_TRACK_ERROR: 'close_track_error',
  TURN_KEY_NOT_FOUND: 'turn_key_not_found',
  INTERNAL_ERROR: 'internal_error',
  DRAINING: 'draining',
  BAD_REQUEST: 'bad_request',
  NO_SFU: 'no_sfu',
  SFU_UNREACHABLE: 'sfu_unreachable',
  OWNER_UNREACHABLE: 'owner_unreachable',
});

/** `type`s of client → server messages. */
export const CLIENT_TYPES = Object.freeze([
  'hello',
  'ping',
  'leave',
  'publish',
  'unpublish',
  'set_track',
  'hand',
  'speaking',
  'codecs',
  'mute',
  'remove',
  'lock',
  'record',
  'set_cap',
  'ready',
  'commit_failed',
]);

/** `type`s of direct replies (no `seq`); every other server text frame is a log entry. */
export const DIRECT_TYPES = Object.freeze([
  'welcome',
  'resumed',
  'pong',
  'error',
  'commit_rejected',
  'layers',
  'move',
]);

/** `type`s of the room log's JSON entries. */
export const ENTRY_TYPES = Object.freeze([
  'joined',
  'left',
  'away',
  'back',
  'creator',
  'execute',
  'commit_void',
  'session',
  'published',
  'unpublished',
  'track_enabled',
  'muted',
  'hand',
  'speaking',
  'codecs',
  'host',
  'locked',
  'cap',
]);
